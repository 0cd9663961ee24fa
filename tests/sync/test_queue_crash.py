"""Crash safety of the sync queue: workers killed or stopped mid-sync, broker connections lost.

Every run ends in a terminal state, none is synced twice at the same time, events stay unique.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.db.models import Count

from calendars.models import Event
from sync.models import SyncRun
from sync.services import sync_request_account
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.post_sync import post_sync_in_process
from tests.support.queue_lab import (
    broker_connections_of,
    close_broker_connections,
    make_fake_accounts,
    max_start_displacement,
    wait_all_terminal,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def request(accounts) -> list[int]:
    return [sync_request_account(account=a, trigger=SyncRun.Trigger.API).pk for a in accounts]


def started_by(lab, account) -> int:
    """The pid of the worker process that started syncing `account` (waits for it)."""
    key = account.url.split("/")[3].split("?")[0]

    def pid():
        starts = [e for e in lab.provider_log() if e["key"] == key and e["event"] == "start"]
        return starts[-1]["pid"] if starts else None

    return wait_for(pid, timeout=30, what=f"a worker to start syncing {key}")


def assert_no_overlapping_syncs(lab) -> None:
    """Per account, each sync's start comes after the previous one ended or its worker died."""
    open_syncs: dict[str, int] = {}
    dead = {w.pid for w in lab.workers if not w.alive()}
    for entry in lab.provider_log():
        key, pid = entry["key"], entry["pid"]
        if entry["event"] == "start":
            holder = open_syncs.get(key)
            assert holder is None or holder in dead, f"two syncs of {key} at once"
            open_syncs[key] = pid
        else:
            open_syncs.pop(key, None)


def assert_events_unique_and_complete(accounts, per_account: int) -> None:
    for account in accounts:
        rows = Event.objects.filter(calendar__account=account)
        assert rows.count() == per_account
        dupes = rows.values("uid", "recurrence_id").annotate(n=Count("id")).filter(n__gt=1)
        assert not dupes.exists()


def test_kill_9_mid_sync_is_finished_by_another_worker(lab, user):
    lab.configure(CALY_LEASE_SECONDS=2)
    first, second = lab.start_workers(2, threads=2)
    slow = make_fake_accounts(user, 1, delay=0.4, batches=8, events=16)
    quick = make_fake_accounts(user, 30, delay=0.02, batches=2, events=2)
    run_ids = request(slow) + request(quick)

    victim = first if started_by(lab, slow[0]) == first.pid else second
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)

    runs = wait_all_terminal(run_ids, timeout=60)
    assert {r.state for r in runs} == {"succeeded"}, [(r.pk, r.state, r.error) for r in runs]
    slow_run = SyncRun.objects.get(pk=run_ids[0])
    assert slow_run.attempts == 2  # the killed one and the one that finished it
    assert SyncRun.objects.filter(state__in=["queued", "running"]).count() == 0
    assert_events_unique_and_complete(slow, 16)
    assert_events_unique_and_complete(quick, 2)
    assert_no_overlapping_syncs(lab)
    assert max_start_displacement(runs) <= 4 - 1


def test_broker_connections_closed_mid_load(lab, user):
    lab.configure(CALY_LEASE_SECONDS=2)
    workers = lab.start_workers(2, threads=2)
    before = make_fake_accounts(user, 40, delay=0.05, batches=2, events=2)
    after = make_fake_accounts(user, 20, delay=0.01, batches=1, events=2)
    run_ids = request(before)
    wait_for(
        lambda: SyncRun.objects.filter(pk__in=run_ids, state="succeeded").count() >= 5,
        timeout=30,
        what="the first runs to finish",
    )

    names = broker_connections_of([w.pid for w in workers] + [os.getpid()])
    assert names, "found none of our broker connections to close"
    close_broker_connections(names)
    run_ids += request(after)  # publishing reconnects by itself

    runs = wait_all_terminal(run_ids, timeout=90)
    assert {r.state for r in runs} == {"succeeded"}, [(r.pk, r.state, r.error) for r in runs]
    assert all(r.attempts == 1 for r in runs), [(r.pk, r.attempts) for r in runs if r.attempts != 1]
    assert all(w.alive() for w in workers)
    assert_events_unique_and_complete(before + after, 2)
    assert_no_overlapping_syncs(lab)


def test_sigterm_lets_a_short_sync_finish(lab, user):
    lab.configure(CALY_SHUTDOWN_GRACE_SECONDS=20)
    worker = lab.start_worker(threads=2)
    account = make_fake_accounts(user, 1, delay=0.3, batches=5, events=5)
    [run_id] = request(account)
    assert started_by(lab, account[0]) == worker.pid

    signalled = time.monotonic()
    assert worker.stop(sig=signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - signalled < 15

    run = SyncRun.objects.get(pk=run_id)
    assert (run.state, run.attempts, run.created) == ("succeeded", 1, 5)


def test_sigterm_hands_a_long_sync_back_to_another_worker(lab, user):
    lab.configure(CALY_SHUTDOWN_GRACE_SECONDS=0.5)
    leaving = lab.start_worker(threads=2)
    account = make_fake_accounts(user, 1, delay=0.4, batches=16, events=32)
    [run_id] = request(account)
    assert started_by(lab, account[0]) == leaving.pid
    staying = lab.start_worker(threads=2, wait=False)

    signalled = time.monotonic()
    assert leaving.stop(sig=signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - signalled < 5  # grace and one batch; the whole sync would take 6.8 s
    staying.wait_ready()

    [run] = wait_all_terminal([run_id], timeout=60)
    assert (run.state, run.attempts) == ("succeeded", 1), run.error
    pids = [e["pid"] for e in lab.provider_log() if e["event"] == "start"]
    assert pids == [leaving.pid, staying.pid]
    assert_events_unique_and_complete(account, 32)


def test_post_sync_while_the_broker_is_down_is_503_with_nothing_recorded(lab, user):
    [account] = make_fake_accounts(user, 1, events=1)
    down = post_sync_in_process(
        user_id=user.pk,
        account_id=account.pk,
        env={**lab.env(), "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"},
    )
    assert down["status"] == 503, down
    assert "RabbitMQ" in down["body"]["detail"]
    assert down["seconds"] < 15  # a clear answer, not a hanging request
    assert not SyncRun.objects.exists()

    lab.start_worker(threads=1)
    up = post_sync_in_process(user_id=user.pk, account_id=account.pk, env=lab.env())
    assert up["status"] == 202, up
    [run] = wait_all_terminal([up["body"]["runs"][0]["id"]], timeout=30)
    assert run.state == "succeeded"
