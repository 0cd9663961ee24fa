"""Service rules that need only the database."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import signals
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kombu.exceptions import OperationalError

from calendars.models import Account, Event
from sync import lifecycle, services
from sync.models import SyncLease, SyncRun
from sync.providers.base import ChangeBatch, RemoteEvent, RemoteObject
from sync.tasks import run_sync
from tests.factories import make_account, make_calendar, make_user
from tests.support.fake_provider import fake_url

pytestmark = pytest.mark.django_db


def fake_account(settings, key: str, **behaviour) -> Account:
    """An account of the queue tests' fake provider (tests/support/fake_provider.py)."""
    return Account.objects.create(
        owner=make_user(), provider="fake", name="Fake", url=fake_url(key, **behaviour)
    )


def remote(uid: str, href: str) -> RemoteObject:
    return RemoteObject(href=href, etag='"1"', events=(RemoteEvent(uid=uid),), raw="")


def test_an_object_too_big_for_its_columns_is_skipped_and_named_the_rest_stored():
    calendar = make_calendar(make_account(make_user()))
    batch = ChangeBatch(objects=[remote("x" * 1001, "/cal/long.ics"), remote("ok", "/cal/ok.ics")])

    services.events_apply(calendar=calendar, batch=batch)

    assert list(Event.objects.filter(calendar=calendar).values_list("uid", flat=True)) == ["ok"]
    assert [(s.href, s.reason) for s in batch.skipped] == [
        ("/cal/long.ics", "uid too long to store")
    ]


def test_a_batch_is_stored_in_one_transaction_its_events_keeping_their_ids():
    calendar = make_calendar(make_account(make_user()))
    objects = [remote(f"u{i}", f"/cal/{i}.ics") for i in range(1200)]
    services.events_apply(calendar=calendar, batch=ChangeBatch(objects=objects))
    kept = Event.objects.get(calendar=calendar, uid="u1199").pk

    # 1,100 deleted, 1 changed, 500 added.
    moved = RemoteEvent(uid="u1199", summary="Moved")
    changed = RemoteObject(href="/cal/1199.ics", etag='"2"', events=(moved,), raw="Moved")
    added = [remote(f"u{i}", f"/cal/{i}.ics") for i in range(1200, 1700)]
    gone = [f"/cal/{i}.ics" for i in range(1100)]
    with CaptureQueriesContext(connection) as queries:
        plan = services.events_apply(
            calendar=calendar, batch=ChangeBatch(objects=[changed, *added], deleted_hrefs=gone)
        )

    assert (len(plan.create), len(plan.update), len(plan.delete_ids)) == (500, 1, 1100)
    assert Event.objects.filter(calendar=calendar).count() == 600
    event = Event.objects.get(calendar=calendar, uid="u1199")
    assert (event.pk, event.etag, event.summary) == (kept, '"2"', "Moved")
    sql = [q["sql"] for q in queries.captured_queries]
    writes = [i for i, q in enumerate(sql) if q.startswith(("DELETE", "INSERT", "UPDATE"))]
    # The deletions and the 501 events (500 rows an INSERT) between one SAVEPOINT and its
    # release: all of the batch is stored, or none of it.
    assert sum(sql[i].startswith("DELETE") for i in writes) >= 1
    assert sum(sql[i].startswith("INSERT") for i in writes) == 2
    savepoints = [i for i, q in enumerate(sql) if q.startswith(("SAVEPOINT", "RELEASE"))]
    assert savepoints[0] < writes[0] and writes[-1] < savepoints[-1]


def test_new_credentials_reactivate_an_account_that_needed_them_but_not_a_disabled_one():
    user = make_user()
    expired = make_account(user, status=Account.Status.NEEDS_REAUTH)
    disabled = make_account(user, status=Account.Status.DISABLED)

    services.account_update(account=expired, credentials={"password": "new"})
    services.account_update(account=disabled, credentials={"password": "new"})

    assert Account.objects.get(pk=expired.pk).status == Account.Status.ACTIVE
    assert Account.objects.get(pk=disabled.pk).status == Account.Status.DISABLED
    assert Account.objects.get(pk=disabled.pk).credentials == {"password": "new"}


def test_a_first_sync_reads_no_stored_events_before_its_first_batch_a_no_change_one_none(
    settings,
):
    account = fake_account(settings, "k1", events=4, batches=2)

    def sync() -> tuple[services.RunResult, list[str]]:
        run = services.sync_request_account(account=account, trigger="api", publish=False)
        with CaptureQueriesContext(connection) as queries:
            result = services.sync_run_execute(run_id=run.pk)
        # Savepoints are the test's own transaction; a worker's are BEGIN and COMMIT.
        sql = [q["sql"] for q in queries.captured_queries]
        return result, [q for q in sql if not q.startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]

    first, first_sql = sync()
    assert (first.state, first.counts["created"]) == ("succeeded", 4)
    assert Event.objects.filter(calendar__account=account).count() == 4
    # The calendar is new: the stored etags are not read, nor the stored events for the first
    # batch; the second batch is compared with what the first stored.
    assert sum('FROM "calendars_event"' in sql for sql in first_sql) == 1
    # Each batch is stored in one INSERT; the last one moves the calendar's cursor after it.
    stores = [i for i, sql in enumerate(first_sql) if 'INSERT INTO "calendars_event"' in sql]
    assert len(stores) == 2
    cursor = [i for i, sql in enumerate(first_sql) if 'UPDATE "calendars_calendar"' in sql]
    assert stores[0] < stores[1] < cursor[0]

    again, again_sql = sync()
    assert (again.state, again.counts["created"], again.counts["updated"]) == ("succeeded", 0, 0)
    # An unchanged CTag: the stored etags are not read.
    assert len(again_sql) == 11, "\n".join(again_sql)
    assert not any('"calendars_event"' in sql for sql in again_sql)


def test_the_message_of_a_run_deleted_before_its_first_sync_is_dropped(settings):
    account = fake_account(settings, "k2", events=1)
    run = services.sync_request_account(account=account, trigger="api", publish=False)
    SyncRun.objects.filter(pk=run.pk).delete()

    assert services.sync_run_execute(run_id=run.pk).state == "missing"
    assert not SyncLease.objects.filter(account=account).exists()
    assert not Event.objects.filter(calendar__account=account).exists()


def test_a_run_starts_when_a_worker_slot_took_its_message_not_when_its_thread_got_to_it(settings):
    account = fake_account(settings, "k3", events=1)
    run = services.sync_request_account(account=account, trigger="api", publish=False)

    before = timezone.now()
    # What the worker's consumer does as the message arrives (caly.celery.note_sync_taken).
    message = SimpleNamespace(name="sync.run_sync", id=run.task_id)
    signals.task_received.send(sender=None, request=message)
    taken = timezone.now()
    # ...and, later, a pool thread runs the task of that message.
    run_sync.push_request(id=run.task_id, hostname="worker-1")
    try:
        assert run_sync(run.pk)["state"] == "succeeded"
    finally:
        run_sync.pop_request()

    run.refresh_from_db()
    assert before <= run.started_at <= taken
    assert lifecycle.taken_at(run.task_id) is None  # read once, by the task


@pytest.mark.django_db(transaction=True)
def test_a_request_for_every_account_is_all_or_nothing_when_the_broker_fails_part_way(
    monkeypatch,
):
    user = make_user()
    waiting, first, second = (make_account(user, name=n) for n in ("waiting", "first", "second"))
    queued = services.sync_request_account(account=waiting, trigger="api", publish=False)
    published = []

    def publish_run(*, run_id: int, task_id: str, delay: int = 0) -> None:
        if published:  # RabbitMQ goes away after taking the first new run
            raise OperationalError("connection refused")
        published.append(run_id)

    monkeypatch.setattr("sync.retry.publish_run", publish_run)
    with pytest.raises(services.BrokerUnavailable, match="nothing was queued"):
        services.sync_request(user=user, trigger="api")

    # The run that was already queued stays; the one RabbitMQ took is withdrawn (its message
    # finds no run and is dropped, as above); the one it refused was never kept.
    assert list(SyncRun.objects.values_list("pk", flat=True)) == [queued.pk]
    assert len(published) == 1
    assert not SyncRun.objects.filter(account__in=[first, second]).exists()
