"""`update_rows` stores what `QuerySet.update()` stores, in one statement written once."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.models import F, JSONField, Value
from django.test.utils import CaptureQueriesContext

from calendars.models import Account, Calendar
from caly.rows import update_rows
from sync.models import SyncLease, SyncRun
from tests.factories import make_account, make_calendar, make_user

pytestmark = pytest.mark.django_db

WHEN = dt.datetime(2026, 11, 26, 21, 30, 15, 123456, tzinfo=dt.UTC)


@pytest.fixture
def account():
    return make_account(make_user())


def _row(model, pk) -> dict:
    return model.objects.filter(pk=pk).values().get()


def test_the_same_rows_and_values_as_the_orm(account):
    # Two twin runs: one updated by the ORM, one by update_rows, with the same values.
    runs = [
        SyncRun.objects.create(account=account, trigger="api", state="running", events_processed=5)
        for _ in range(2)
    ]
    values = {
        "state": SyncRun.State.SUCCEEDED,
        "finished_at": WHEN,
        "error": "",
        "events_processed": F("events_processed") + 7,
        "created": 3,
    }
    by_orm = SyncRun.objects.filter(pk=runs[0].pk, state="running").update(**values)
    with CaptureQueriesContext(connection) as queries:
        by_rows = update_rows(SyncRun, {"pk": runs[1].pk, "state": "running"}, values)

    assert by_orm == by_rows == 1
    assert len(queries) == 1
    orm, rows = _row(SyncRun, runs[0].pk), _row(SyncRun, runs[1].pk)
    different = {k for k in orm if orm[k] != rows[k]} - {"id", "task_id", "requested_at"}
    assert different == set()
    assert rows["finished_at"] == WHEN and rows["events_processed"] == 12


def test_filters_in_null_and_foreign_keys(account):
    calendars = [make_calendar(account) for _ in range(3)]
    other = make_calendar(make_account(account.owner))

    chosen = [calendars[0].pk, calendars[2].pk]
    assert update_rows(Calendar, {"pk__in": chosen}, {"last_synced_at": WHEN}) == 2
    assert update_rows(Calendar, {"pk__in": []}, {"last_synced_at": WHEN}) == 0
    assert (
        update_rows(Calendar, {"account_id": account.pk, "last_synced_at": None}, {"ctag": "moved"})
        == 1
    )

    stored = {c.pk: (c.last_synced_at, c.ctag) for c in Calendar.objects.all()}
    assert stored[calendars[0].pk] == stored[calendars[2].pk] == (WHEN, "")
    assert stored[calendars[1].pk] == (None, "moved")
    assert stored[other.pk] == (None, "")


def test_a_lease_taken_and_given_back(account):
    lease = SyncLease.objects.create(account=account)
    expires = WHEN + dt.timedelta(seconds=60)
    assert update_rows(SyncLease, {"pk": lease.pk}, {"holder": "7:w:abc", "expires_at": expires})
    # Only the holder gives it back.
    assert (
        update_rows(SyncLease, {"account_id": account.pk, "holder": "8:w:zzz"}, {"holder": ""}) == 0
    )
    assert _row(SyncLease, lease.pk)["expires_at"] == expires
    free = {"holder": "", "expires_at": None}
    assert update_rows(SyncLease, {"account_id": account.pk, "holder": "7:w:abc"}, free) == 1
    assert SyncLease.objects.filter(holder="", expires_at=None).count() == 1


def test_shapes_it_does_not_cover_go_to_the_orm(account):
    account_b = make_account(account.owner, name="B")
    # A lookup across a relation, a model instance, an expression other than F(same) + n.
    assert (
        update_rows(Account, {"owner__username": account.owner.username}, {"last_error": "x"}) == 2
    )
    calendar = make_calendar(account)
    assert update_rows(Calendar, {"account": account_b}, {"name": "none"}) == 0
    assert update_rows(Calendar, {"pk": calendar.pk}, {"name": F("color")}) == 1
    calendar.refresh_from_db()
    assert calendar.name == calendar.color
    assert set(Account.objects.values_list("last_error", flat=True)) == {"x"}


def test_credentials_are_encrypted_as_the_orm_encrypts_them(account):
    update_rows(Account, {"pk": account.pk}, {"credentials": {"password": "s3cret-pw"}})
    account.refresh_from_db()
    assert account.credentials == {"password": "s3cret-pw"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM calendars_account WHERE id = %s", [account.pk])
        assert "s3cret-pw" not in str(cursor.fetchone()[0])


def test_filters_the_orm_reads_differently_go_to_it(account):
    runs = [SyncRun.objects.create(account=account, trigger="api", state=s) for s in "rf"]
    json_null = Value(None, output_field=JSONField())  # not SQL NULL
    SyncRun.objects.filter(pk=runs[0].pk).update(skipped=json_null)
    # A JSON field compared with None, an expression, a generator read once, model instances.
    assert update_rows(SyncRun, {"skipped": None}, {"error": "a"}) == 1
    assert update_rows(SyncRun, {"task_id": F("task_id"), "state": "f"}, {"error": "b"}) == 1
    ids = (r.pk for r in runs)
    assert update_rows(SyncRun, {"pk__in": ids}, {"error": F("trigger")}) == 2
    assert update_rows(SyncRun, {"account__in": [account]}, {"created": 1}) == 2
    chosen = SyncRun.objects.filter(state="r").values("pk")
    assert update_rows(SyncRun, {"pk__in": chosen}, {"updated": 9}) == 1

    stored = {r.state: (r.error, r.created, r.updated) for r in SyncRun.objects.all()}
    assert stored == {"r": ("api", 1, 9), "f": ("api", 1, 0)}
