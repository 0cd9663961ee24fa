"""Running one sync (sync.services.runs), with the database only: the tests' fake provider
stands in for a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import signals
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from calendars.models import Account, Event
from sync import services
from sync.models import SyncLease, SyncRun
from sync.tasks import run_sync
from tests.factories import make_user
from tests.support.fake_provider import fake_url

pytestmark = pytest.mark.django_db


def fake_account(key: str, **behaviour) -> Account:
    """An account of the queue tests' fake provider (tests/support/fake_provider.py)."""
    return Account.objects.create(
        owner=make_user(), provider="fake", name="Fake", url=fake_url(key, **behaviour)
    )


def test_a_first_sync_reads_no_stored_events_before_its_first_batch_a_no_change_one_none():
    account = fake_account("k1", events=4, batches=2)

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
    stores = [
        i
        for i, sql in enumerate(first_sql)
        if sql.lstrip().startswith("INSERT INTO calendars_event")
    ]
    assert len(stores) == 2
    cursor = [i for i, sql in enumerate(first_sql) if 'UPDATE "calendars_calendar"' in sql]
    assert stores[0] < stores[1] < cursor[0]

    again, again_sql = sync()
    assert (again.state, again.counts["created"], again.counts["updated"]) == ("succeeded", 0, 0)
    # An unchanged CTag: the stored etags are not read. The claim and its account, the
    # calendars, the lease given back and the rest of the ending (with the run's progress).
    assert len(again_sql) == 5, "\n".join(again_sql)
    assert not any('"calendars_event"' in sql for sql in again_sql)


def test_the_message_of_a_run_deleted_before_its_first_sync_is_dropped():
    account = fake_account("k2", events=1)
    run = services.sync_request_account(account=account, trigger="api", publish=False)
    SyncRun.objects.filter(pk=run.pk).delete()

    assert services.sync_run_execute(run_id=run.pk).state == "missing"
    assert not SyncLease.objects.filter(account=account).exists()
    assert not Event.objects.filter(calendar__account=account).exists()


def test_a_run_starts_when_a_worker_slot_took_its_message_not_when_its_thread_got_to_it():
    account = fake_account("k3", events=1)
    run = services.sync_request_account(account=account, trigger="api", publish=False)

    before = timezone.now()
    # What the worker's consumer does as the message arrives (sync.lifecycle.note_sync_taken).
    message = SimpleNamespace(
        name="sync.run_sync", id=run.task_id, request_dict={"id": run.task_id}
    )
    signals.task_received.send(sender=None, request=message)
    taken = timezone.now()
    # ...and, later, a pool thread runs the task of that message.
    run_sync.push_request(hostname="worker-1", **message.request_dict)
    try:
        assert run_sync(run.pk)["state"] == "succeeded"
    finally:
        run_sync.pop_request()

    run.refresh_from_db()
    assert before <= run.started_at <= taken


def _sync_story(account: Account) -> list[tuple]:
    """A first sync, a no-change one, one whose account is taken over by a deferred run, and
    one the server refuses; what each left on the run, the account and its lease."""
    from sync import states
    from sync.providers.base import AuthError
    from tests.support.fake_provider import FakeProvider

    def request() -> SyncRun:
        return services.sync_request_account(account=account, trigger="api", publish=False)

    def seen(run_id: int) -> tuple:
        run = SyncRun.objects.get(pk=run_id)
        account.refresh_from_db()
        lease = SyncLease.objects.get(account=account)
        return (
            (run.state, run.error, run.attempts, run.deferred, run.published_at is None),
            (run.created, run.updated, run.deleted, run.events_processed),
            (run.calendars_total, run.calendars_done, run.finished_at is not None),
            (account.status, account.last_error, account.last_synced_at is not None),
            (lease.holder, lease.run_id, lease.expires_at),
        )

    story = []
    for _ in range(2):
        story.append(seen(services.sync_run_execute(run_id=request().pk).run))
    first = request()
    claim = states.run_claim(run_id=first.pk)
    follow_up = request()  # the first is running now: this one is queued behind it
    assert states.run_claim(run_id=follow_up.pk).outcome is states.ClaimOutcome.DEFERRED
    ending = states.Ending(SyncRun.State.SUCCEEDED)
    recorded, handed_over = states.run_end(
        run=claim.run, counts=states.Counts(), token=claim.token, ending=ending
    )
    story += [seen(first.pk), seen(follow_up.pk), (recorded, handed_over.pk == follow_up.pk)]
    refused = AuthError("The server refused the password. Reconnect the account.")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeProvider, "discover", lambda self: (_ for _ in ()).throw(refused))
        story.append(seen(services.sync_run_execute(run_id=follow_up.pk).run))
    return story


def test_the_written_out_statements_record_runs_as_the_orm_does(monkeypatch):
    from sync import sql

    assert sql.in_use()  # the suite runs on PostgreSQL
    by_sql = _sync_story(fake_account("sql", events=4, batches=2))
    monkeypatch.setattr(sql, "in_use", lambda: False)
    by_orm = _sync_story(fake_account("orm", events=4, batches=2))

    assert by_sql == by_orm
    # ...and what they record is what a user expects of that story.
    first, no_change, taken_over, handed_over, (recorded, is_follow_up), refused = by_sql
    assert first[0][0] == no_change[0][0] == taken_over[0][0] == "succeeded"
    assert first[1] == (4, 0, 0, 4) and no_change[1] == (0, 0, 0, 0)
    assert (recorded, is_follow_up) == (True, True)
    assert handed_over[0] == ("queued", "", 0, False, True)  # due, for the caller to publish
    assert refused[0][:2] == ("failed", "The server refused the password. Reconnect the account.")
    assert refused[3][:2] == ("needs_reauth", refused[0][1])
    assert refused[4] == ("", None, None)  # the lease is free again


# --- runs that must always end (#15) -------------------------------------------------------
def test_an_account_whose_credentials_no_key_reads_fails_its_run_and_asks_for_a_reconnect(
    settings,
):
    from cryptography.fernet import Fernet
    from rest_framework.test import APIClient

    unreadable = fake_account("rotated", events=1)
    Account.objects.filter(pk=unreadable.pk).update(credentials={"password": "old-secret"})
    readable = Account.objects.create(
        owner=unreadable.owner, provider="fake", name="Fine", url=fake_url("fine", events=1)
    )
    run = services.sync_request_account(account=unreadable, trigger="api", publish=False)
    # The key the password was stored with is rotated out; the account's own key is now gone.
    settings.CALY_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    Account.objects.filter(pk=readable.pk).update(credentials={})

    result = services.sync_run_execute(run_id=run.pk)

    run.refresh_from_db()
    unreadable.refresh_from_db(fields=["status"])
    assert (result.state, run.state) == ("failed", "failed")
    assert "Reconnect the account" in run.error and "old-secret" not in run.error
    assert unreadable.status == Account.Status.NEEDS_REAUTH
    assert not SyncLease.objects.filter(account=unreadable, holder__gt="").exists()
    # Asking for a sync of everything does not trip over the unreadable account either.
    client = APIClient()
    client.force_authenticate(unreadable.owner)
    answer = client.post("/api/sync/", {}, format="json")
    assert answer.status_code == 202, answer.content
    assert [r["account"] for r in answer.json()["runs"]] == [readable.pk]


def test_a_claim_that_meets_a_database_error_comes_back_later(monkeypatch):
    from django.db import OperationalError

    from sync import broker, states

    account = fake_account("db-away", events=1)
    run = services.sync_request_account(account=account, trigger="api", publish=False)
    sent = []
    monkeypatch.setattr(broker, "publish_run", lambda **message: sent.append(message))
    real_claim = states.run_claim

    def claim_once_failing(**kwargs):
        monkeypatch.setattr(states, "run_claim", real_claim)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(states, "run_claim", claim_once_failing)
    result = services.sync_run_execute(run_id=run.pk, task_id=run.task_id)

    assert (result.state, result.back_in) == ("queued", sent[0]["delay"])
    assert sent[0]["run_id"] == run.pk and sent[0]["delay"] > 0
    # The message that comes back syncs the account.
    assert services.sync_run_execute(run_id=run.pk).state == "succeeded"


def test_the_reaper_sends_again_a_run_published_long_ago_that_no_worker_took(monkeypatch):
    from sync.services import reaper

    account = fake_account("lost-message", events=1)
    run = services.sync_request_account(account=account, trigger="api", publish=False)
    long_ago = timezone.now() - timezone.timedelta(hours=1)
    SyncRun.objects.filter(pk=run.pk).update(requested_at=long_ago, published_at=long_ago)
    fresh = services.sync_request_account(
        account=fake_account("in-the-queue"), trigger="api", publish=False
    )
    SyncRun.objects.filter(pk=fresh.pk).update(requested_at=long_ago, published_at=timezone.now())
    sent = []
    monkeypatch.setattr(reaper, "sync_publish", lambda *, run: sent.append(run.pk))

    assert reaper.sync_runs_reap()["published"] == [run.pk]
    assert sent == [run.pk]
