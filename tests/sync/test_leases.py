"""One sync per account at a time: coalescing, the per-account lease, and the reaper.

Concurrent requests for one account end in one queued run; while a run is running, in exactly
one follow-up; two workers never sync the same account at once; what a dead worker or a broker
outage left behind is put back by the reaper (`sync.reap_stale_runs`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from caly.celery import app
from sync.models import SyncLease, SyncRun
from sync.services import sync_request_account, sync_runs_reap
from tests.support.polling import wait_for
from tests.support.queue_lab import make_fake_accounts, wait_all_terminal
from tests.support.workers import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def concurrent_requests(user, account, count: int) -> list[list[int]]:
    """`count` POST /api/sync/ for one account, released at the same moment from threads."""
    barrier = threading.Barrier(count)
    answers: list = [None] * count

    def ask(i):
        client = APIClient()
        client.force_authenticate(user)
        try:
            barrier.wait()
            response = client.post("/api/sync/", {"account": account.pk}, format="json")
            answers[i] = (response.status_code, [r["id"] for r in response.json()["runs"]])
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 202 for status, _ in answers), answers
    return [ids for _, ids in answers]


def syncs_overlap(log: list[dict], key: str) -> bool:
    running = False
    for entry in (e for e in log if e["key"] == key):
        if entry["event"] == "start":
            if running:
                return True
            running = True
        else:
            running = False
    return False


def test_concurrent_requests_for_a_queued_account_coalesce(lab, user):
    [account] = make_fake_accounts(user, 1)  # no worker: the run stays queued
    answers = concurrent_requests(user, account, 12)
    assert len({tuple(ids) for ids in answers}) == 1
    assert SyncRun.objects.filter(account=account).count() == 1


def test_running_account_gets_one_follow_up_and_never_two_syncs_at_once(lab, user):
    lab.start_workers(2, threads=2)
    accounts = make_fake_accounts(user, 3, delay=0.25, batches=4, events=4)
    first = {a.pk: sync_request_account(account=a, trigger="api").pk for a in accounts}
    wait_for(
        lambda: SyncRun.objects.filter(pk__in=first.values(), state="running").count() == 3,
        timeout=30,
        what="the three syncs to start",
    )

    follow_ups = {}
    for account in accounts:
        answers = concurrent_requests(user, account, 8)
        [[follow_up]] = {tuple(ids) for ids in answers}
        assert follow_up != first[account.pk]
        follow_ups[account.pk] = follow_up

    runs = wait_all_terminal([*first.values(), *follow_ups.values()], timeout=60)
    assert {r.state for r in runs} == {"succeeded"}
    assert SyncRun.objects.count() == 6
    log = lab.provider_log()
    for account in accounts:
        key = account.url.split("/")[3].split("?")[0]
        assert [e["event"] for e in log if e["key"] == key] == ["start", "end", "start", "end"]
        assert not syncs_overlap(log, key)
    # The follow-up started only after the first finished (it waited, deferred, not in a slot).
    for account in accounts:
        before, after = (
            SyncRun.objects.get(pk=p) for p in (first[account.pk], follow_ups[account.pk])
        )
        assert after.started_at >= before.finished_at


def test_reaper_requeues_fails_and_republishes_what_was_left_behind(lab, user):
    lab.configure(CALY_SYNC_MAX_ATTEMPTS=3)
    lab.start_worker(threads=2)
    a_dead, a_worn, a_live, a_deferred, a_lost, a_fresh = make_fake_accounts(user, 6, events=1)
    now = timezone.now()
    minute_ago = now - dt.timedelta(minutes=1)

    def running(account, *, attempts, lease_expires):
        run = SyncRun.objects.create(
            account=account,
            trigger="api",
            state="running",
            attempts=attempts,
            started_at=minute_ago,
            requested_at=minute_ago,
            published_at=minute_ago,
        )
        SyncLease.objects.create(
            account=account, holder=f"{run.pk}:gone@host:x", run=run, expires_at=lease_expires
        )
        return run

    dead = running(a_dead, attempts=1, lease_expires=now - dt.timedelta(seconds=5))
    worn = running(a_worn, attempts=3, lease_expires=now - dt.timedelta(seconds=5))
    live = running(a_live, attempts=1, lease_expires=now + dt.timedelta(minutes=5))
    deferred = SyncRun.objects.create(
        account=a_deferred, trigger="api", deferred=True, requested_at=minute_ago, published_at=now
    )
    lost = SyncRun.objects.create(account=a_lost, trigger="api", requested_at=minute_ago)
    fresh = SyncRun.objects.create(account=a_fresh, trigger="api")  # its publish is under way

    summary = sync_runs_reap()

    assert summary["requeued"] == [dead.pk]
    assert summary["failed"] == [worn.pk]
    assert sorted(summary["published"]) == sorted([dead.pk, deferred.pk, lost.pk])
    runs = wait_all_terminal([dead.pk, deferred.pk, lost.pk], timeout=30)
    assert {r.state for r in runs} == {"succeeded"}
    assert SyncRun.objects.get(pk=dead.pk).attempts == 2
    worn.refresh_from_db()
    assert worn.state == "failed" and "stopped 3 times" in worn.error
    assert SyncRun.objects.get(pk=live.pk).state == "running"
    assert SyncRun.objects.get(pk=fresh.pk).state == "queued"
    assert sync_runs_reap() == {"requeued": [], "failed": [], "published": []}


def test_reaper_is_on_beats_schedule(db):
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    DatabaseScheduler(app=app)  # what `celery beat` does at start: it reads the schedule rows
    entry = PeriodicTask.objects.get(name="sync.reap_stale_runs")
    assert entry.task == "sync.reap_stale_runs" and entry.enabled
    app.loader.import_default_modules()  # what a worker does at start: its tasks register
    assert "sync.reap_stale_runs" in app.tasks


def test_lease_and_queue_on_the_sqlite_default(lab, tmp_path):
    """The same lifecycle on SQLite: worker threads and a requesting process share one file."""
    database = f"sqlite:///{tmp_path / 'caly.sqlite3'}"
    env = {**os.environ, **lab.env(), "DATABASE_URL": database}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, env=env, check=True
    )
    lab.start_worker(threads=4, DATABASE_URL=database)
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.sqlite_scenario", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])

    assert result["states"] == ["succeeded"] * 6 and result["distinct_runs"] == 6, result
    assert result["events"] == 3 * 3
    # Stored as on PostgreSQL: instants in UTC, lists as JSON.
    assert result["an_event"] == [
        ["Event 1", "2030-01-02T09:00:00+00:00", "2030-01-02T10:00:00+00:00", []]
    ]
    assert result["reaper"] == {"requeued": [], "failed": [], "published": []}
    log = lab.provider_log()
    for key in result["keys"]:
        assert [e["event"] for e in log if e["key"] == key] == ["start", "end", "start", "end"]


# --- a fenced lease (#15) -----------------------------------------------------------------
def _fake_account(key: str, **behaviour):
    from calendars.models import Account
    from tests.factories import make_user
    from tests.support.fake_provider import fake_url

    return Account.objects.create(
        owner=make_user(), provider="fake", name="Fake", url=fake_url(key, **behaviour)
    )


def test_a_worker_whose_lease_was_taken_over_writes_nothing_more(db, monkeypatch):
    from calendars.models import Event
    from sync.services import runs

    account = _fake_account("taken-over", events=4, batches=2)
    run = sync_request_account(account=account, trigger="api", publish=False)
    real_apply = runs.events_apply

    def apply_then_lose_the_lease(**kwargs):
        plan = real_apply(**kwargs)
        # Meanwhile the lease lapsed (renewals failing) and another worker took the run over.
        SyncLease.objects.filter(account=account).update(holder=f"{run.pk}:other-worker:1")
        return plan

    monkeypatch.setattr(runs, "events_apply", apply_then_lose_the_lease)
    result = runs.sync_run_execute(run_id=run.pk)

    run.refresh_from_db()
    # The first batch was stored under the lease; the second was refused, and the run is left
    # to the worker that holds the lease now, not marked done by the one that lost it.
    assert Event.objects.filter(calendar__account=account).count() == 2
    assert (result.state, result.lease_lost, run.state) == ("running", True, "running")
    assert SyncLease.objects.get(account=account).holder == f"{run.pk}:other-worker:1"


def test_lease_expiry_is_the_databases_clock_not_the_workers(db, monkeypatch):
    from sync import states

    account = _fake_account("skewed")
    other = sync_request_account(account=account, trigger="api", publish=False)
    assert states.run_claim(run_id=other.pk).outcome is states.ClaimOutcome.ACQUIRED
    follow_up = sync_request_account(account=account, trigger="api", publish=False)
    # This worker's clock runs an hour ahead: by it, the other worker's lease lapsed long ago.
    ahead = timezone.now() + dt.timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: ahead)

    claim = states.run_claim(run_id=follow_up.pk)

    assert claim.outcome is states.ClaimOutcome.DEFERRED
    assert SyncLease.objects.get(account=account).run_id == other.pk


def test_renewals_failing_for_longer_than_the_lease_mean_the_lease_is_lost(
    db, settings, monkeypatch
):
    from django.db import OperationalError

    from sync import leases

    settings.CALY_LEASE_SECONDS = 1

    def database_away(*, tokens):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(leases, "lease_renew", database_away)
    # A keeper of the test's own, renewing every third of the short lease from the start.
    keeper = leases._LeaseKeeper()
    heartbeat = leases.LeaseHeartbeat(account_id=0, token="0:w:lapsing")
    keeper.add(heartbeat)
    try:
        assert not heartbeat.lost
        wait_for(lambda: heartbeat.lost, timeout=10, what="the lapsed lease to count as lost")
    finally:
        keeper.remove(heartbeat)
