"""Periodic resync: which accounts a beat tick queues, how many, and a real beat doing it.

The selection tests run inside a rolled-back transaction, so nothing is published; the last test
runs a real `celery beat` and a real worker against Radicale.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from calendars.models import Account, Event
from caly.celery import app
from sync import services
from sync.models import SyncRun
from tests.factories import make_account, make_user
from tests.support.beat import start_beat
from tests.support.caldav_servers import vevent
from tests.support.polling import wait_for
from tests.support.schedules import beat_schedule  # noqa: F401 (fixture)

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


def ago(**kwargs) -> dt.datetime:
    return NOW - dt.timedelta(**kwargs)


def finished_run(account, *, state=SyncRun.State.SUCCEEDED, **kwargs) -> SyncRun:
    ended = ago(**kwargs)
    return SyncRun.objects.create(
        account=account,
        trigger=SyncRun.Trigger.API,
        state=state,
        requested_at=ended,
        started_at=ended,
        finished_at=ended,
    )


@pytest.mark.django_db
def test_tick_queues_stale_active_accounts_stalest_first(settings):
    settings.CALY_RESYNC_MINUTES = 15
    owner = make_user()
    never = make_account(owner, name="never synced")
    day = make_account(owner, name="a day ago", last_synced_at=ago(days=1))
    hour = make_account(owner, name="an hour ago", last_synced_at=ago(hours=1))
    make_account(owner, name="five minutes ago", last_synced_at=ago(minutes=5))
    make_account(owner, name="needs reauth", status="needs_reauth", last_synced_at=ago(days=2))
    make_account(owner, name="disabled", status="disabled", last_synced_at=ago(days=2))
    queued = make_account(owner, name="queued", last_synced_at=ago(days=3))
    SyncRun.objects.create(account=queued, trigger=SyncRun.Trigger.API)
    running = make_account(owner, name="running", last_synced_at=ago(days=3))
    SyncRun.objects.create(account=running, trigger=SyncRun.Trigger.API, state="running")
    # Last success long ago, but it failed 5 minutes ago: tried again next interval, not now.
    failing = make_account(owner, name="failing", last_synced_at=ago(days=4))
    finished_run(failing, state=SyncRun.State.FAILED, minutes=5)
    # Its last success is recorded on a run only (the account field lags): 3 hours ago.
    by_run = make_account(owner, name="synced by a run", last_synced_at=ago(days=5))
    finished_run(by_run, hours=3)

    runs = services.sync_request_stale(now=NOW)

    assert [r.account for r in runs] == [never, day, by_run, hour]
    assert {(r.trigger, r.state) for r in runs} == {("schedule", "queued")}
    # The next tick finds them queued and queues nothing new.
    assert services.sync_request_stale(now=NOW) == []


@pytest.mark.django_db
def test_a_tick_queues_at_most_its_share_so_a_backlog_is_spread(settings):
    settings.CALY_RESYNC_MINUTES = 15
    owner = make_user()
    accounts = [
        make_account(owner, name=f"acct {i:02d}", last_synced_at=ago(hours=1, minutes=i))
        for i in range(25)
    ]
    stalest_first = accounts[::-1]

    first = services.sync_request_stale(now=NOW)
    second = services.sync_request_stale(now=NOW)
    third = services.sync_request_stale(now=NOW)

    # 25 active accounts due every 15 min: steady 2 a minute, a tick takes at most max(10, 2×2).
    assert [r.account for r in first] == stalest_first[:10]
    assert [r.account for r in second] == stalest_first[10:20]
    assert [r.account for r in third] == stalest_first[20:]
    assert services.resync_batch_size(active_accounts=3000) == 400
    assert services.resync_batch_size(active_accounts=3) == 10


# A plain `db` test runs before any transactional test has flushed what the migrations wrote.
@pytest.mark.django_db
def test_migration_installs_editable_schedules():
    resync = PeriodicTask.objects.get(task="sync.resync_stale")
    assert resync.name == "Resync stale accounts"
    assert resync.enabled and resync.interval.every == 1 and resync.interval.period == "minutes"
    assert "CALY_RESYNC_MINUTES" in resync.description
    cleanup = PeriodicTask.objects.get(task="celery.backend_cleanup")
    # Beat installs its own entry under this very name unless it finds one: no duplicate.
    assert cleanup.name == "celery.backend_cleanup"
    assert (cleanup.crontab.minute, cleanup.crontab.hour) == ("0", "4")


@pytest.mark.django_db
def test_backend_cleanup_deletes_expired_task_results(settings):
    assert settings.CELERY_RESULT_EXPIRES and not app.backend.supports_autoexpire
    old = TaskResult.objects.create(task_id=str(uuid.uuid4()), status="SUCCESS")
    TaskResult.objects.filter(pk=old.pk).update(
        date_done=timezone.now() - dt.timedelta(seconds=settings.CELERY_RESULT_EXPIRES + 60)
    )
    recent = TaskResult.objects.create(task_id=str(uuid.uuid4()), status="SUCCESS")

    app.tasks["celery.backend_cleanup"].run()

    assert list(TaskResult.objects.values_list("pk", flat=True)) == [recent.pk]


@pytest.fixture
def work_calendar(radicale):
    name = f"resync-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name, display_name="Work")
    for i in range(3):
        radicale.put(name, f"r{i}.ics", vevent(f"r{i}-{name}@example.com"))
    yield name
    radicale.delete_calendar(name)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("beat_schedule")
def test_beat_resyncs_stale_accounts_through_the_worker(radicale, work_calendar, worker):
    def connect(name: str) -> Account:
        return services.account_connect(
            owner=make_user(f"resync-{name}"),  # one user connects an account once
            provider="caldav",
            name=name,
            url=radicale.base_url + "/",
            username=radicale.user,
            credentials={"password": "secret-password"},
        )

    stale = connect("stale")
    fresh = connect("fresh")
    Account.objects.filter(pk=fresh.pk).update(last_synced_at=timezone.now())
    # As an operator would in the admin: tick every second instead of every minute.
    task = PeriodicTask.objects.get(task="sync.resync_stale")
    task.interval, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    task.save()
    cleanup_before = PeriodicTask.objects.get(task="celery.backend_cleanup")

    beat = start_beat()
    try:
        run = wait_for(
            lambda: SyncRun.objects.filter(
                account=stale, trigger="schedule", state="succeeded"
            ).first(),
            timeout=60,
            what="beat to queue the stale account and the worker to sync it",
        )
        # Later ticks find nothing to do: the account is fresh now.
        wait_for(
            lambda: (
                TaskResult.objects.filter(
                    task_name="sync.resync_stale", date_done__gt=run.finished_at
                ).count()
                >= 2
            ),
            timeout=30,
            what="two more resync ticks",
        )
    finally:
        beat.stop()

    assert run.created == 3
    assert Event.objects.filter(calendar__account=stale).count() == 3
    assert SyncRun.objects.filter(account=stale).count() == 1
    assert not SyncRun.objects.filter(account=fresh).exists()
    # The task history shows which beat entry sent each tick and which runs it queued.
    tick = TaskResult.objects.get(task_name="sync.resync_stale", result__contains=f"[{run.pk}]")
    assert tick.periodic_task_name == "Resync stale accounts"
    # Beat kept the migration's cleanup entry instead of adding its own.
    cleanup = PeriodicTask.objects.get(task="celery.backend_cleanup")
    assert (cleanup.pk, cleanup.crontab_id) == (cleanup_before.pk, cleanup_before.crontab_id)
