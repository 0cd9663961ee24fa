"""Start order and parallelism of the sync queue, with real workers on a real RabbitMQ.

The promise: with C slots in all (worker processes x threads), a request never starts after a
request that arrived more than C-1 places later; with one slot, strictly first come, first served.
"""

from __future__ import annotations

import random
import threading

import pytest
from django.db import connection

from sync.models import SyncRun
from sync.services import sync_request_account
from tests.support.queue_lab import (
    db_connections,
    make_fake_accounts,
    max_start_displacement,
    wait_all_terminal,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def fake_accounts_of_mixed_duration(user, count: int) -> list:
    """Syncs of 0 to 20 ms (two requests each), shuffled, so fast ones could overtake slow ones."""
    rng = random.Random(20261126)
    accounts = []
    for delay in (0, 0.002, 0.005, 0.01):
        accounts += make_fake_accounts(user, count // 4, delay=delay, batches=1, events=1)
    rng.shuffle(accounts)
    return accounts


def request_in_order(accounts) -> list[int]:
    """One request after the other, each published (and confirmed) before the next."""
    return [sync_request_account(account=a, trigger=SyncRun.Trigger.API).pk for a in accounts]


def test_one_slot_starts_requests_in_exact_arrival_order(lab, user):
    accounts = fake_accounts_of_mixed_duration(user, 120)
    worker = lab.start_worker(threads=1, wait=False)
    run_ids = request_in_order(accounts)  # while the worker starts and consumes
    worker.wait_ready()

    runs = wait_all_terminal(run_ids, timeout=60)

    assert {r.state for r in runs} == {"succeeded"}
    started = [r.pk for r in sorted(runs, key=lambda r: r.started_at)]
    assert started == sorted(run_ids)
    assert max_start_displacement(runs) == 0


def test_many_slots_overtake_by_at_most_slots_minus_one_with_bounded_connections(lab, user):
    processes, threads = 2, 3
    slots = processes * threads
    accounts = fake_accounts_of_mixed_duration(user, 300)
    # Connections other processes of the test run hold (the session's worker, a live server).
    others = db_connections() - 1
    lab.start_workers(processes, threads=threads)

    peak = {"connections": 0}
    stop = threading.Event()

    def sample():
        try:
            while not stop.wait(0.05):
                peak["connections"] = max(peak["connections"], db_connections() - others)
        finally:
            connection.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run_ids = request_in_order(accounts)
        runs = wait_all_terminal(run_ids, timeout=90)
    finally:
        stop.set()
        sampler.join()

    assert {r.state for r in runs} == {"succeeded"}
    displacement = max_start_displacement(runs)
    assert displacement <= slots - 1, displacement
    # Runs did overlap (several slots were really used) ...
    spans = sorted((r.started_at, r.finished_at) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    # ... and the workers' database connections stayed bounded by their slots: one per thread,
    # one lease keeper per process; plus this test's own two (requests and sampling).
    assert peak["connections"] <= slots + processes + 2, peak
