"""`update_rows` stores, and `read_rows` / `read_values` read, what the ORM would: one statement,
written once."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import DataError, connection, transaction
from django.db.models import F, JSONField, Value
from django.test.utils import CaptureQueriesContext

from calendars.models import Account, Calendar, Event
from caly.rows import (
    Statement,
    Update,
    ValueOf,
    read_row,
    read_rows,
    read_values,
    update_rows,
    write_together,
)
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


def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_reads_the_instances_the_orm_reads(account):
    update_rows(Account, {"pk": account.pk}, {"credentials": {"password": "s3cret-pw"}})
    run = SyncRun.objects.create(
        account=account, trigger="api", skipped=[{"href": "/a.ics", "reason": "too long"}]
    )
    by_orm = SyncRun.objects.select_related("account").get(pk=run.pk)
    with CaptureQueriesContext(connection) as queries:
        read = read_row(SyncRun, {"pk": run.pk}, related=("account",), lock=True)
        # The account came with the run: reading it is no query.
        credentials = read.account.credentials

    assert len(queries) == 1
    assert ("FOR UPDATE" in queries[0]["sql"]) == connection.features.has_select_for_update
    assert _fields(read) == _fields(by_orm)
    assert _fields(read.account) == _fields(by_orm.account)
    assert credentials == {"password": "s3cret-pw"}
    assert read.skipped == [{"href": "/a.ics", "reason": "too long"}]
    assert read.requested_at.tzinfo is not None
    assert not read._state.adding
    # Saving what was read stores it unchanged.
    read.save()
    assert _fields(SyncRun.objects.get(pk=run.pk)) == _fields(by_orm)


def test_filters_order_and_a_value_of_another_row(account):
    other = make_account(account.owner, name="B")
    calendars = [make_calendar(account, name=n) for n in "cab"]
    make_calendar(other)
    run = SyncRun.objects.create(account=account, trigger="api")
    lease = SyncLease.objects.create(account=account, holder="1:w:x")
    SyncLease.objects.create(account=other)

    assert read_rows(Calendar, {"account_id": account.pk}, order_by=("-pk",)) == calendars[::-1]
    assert read_rows(Calendar, {"pk__in": []}) == []
    assert (
        read_row(Calendar, {"account_id": account.pk, "last_synced_at": None, "name": "a"})
        == (calendars[1])
    )
    assert read_row(Calendar, {"pk": -1}) is None
    # The lease of the run's account, without reading the run first.
    assert read_row(SyncLease, {"account_id": ValueOf(SyncRun, "account_id", run.pk)}) == lease
    assert read_row(SyncLease, {"account_id": ValueOf(SyncRun, "account_id", -1)}) is None
    assert update_rows(
        SyncLease, {"account_id": ValueOf(SyncRun, "account_id", run.pk)}, {"holder": ""}
    )
    assert SyncLease.objects.get(pk=account.pk).holder == ""


def test_values_as_values_list_reads_them(account):
    calendar = make_calendar(account)
    for uid, href in (("a", "/1.ics"), ("a-r1", "/1.ics"), ("b", "/2.ics")):
        calendar.events.create(uid=uid, href=href, etag=f'"{href}"', rdate=[uid])
    by_orm = calendar.events.values_list("href", "etag").distinct().order_by()
    read = read_values(Event, {"calendar_id": calendar.pk}, ("href", "etag"), distinct=True)
    assert sorted(read) == sorted(by_orm) == [("/1.ics", '"/1.ics"'), ("/2.ics", '"/2.ics"')]
    # Converters apply: JSON comes back as Python values.
    assert sorted(read_values(Event, {"calendar_id": calendar.pk}, ("rdate",))) == [
        (["a"],),
        (["a-r1"],),
        (["b"],),
    ]


def test_reads_it_does_not_cover_go_to_the_orm(account):
    make_calendar(account, name="x")
    # A lookup across a relation; a model instance; a queryset as an `__in` filter.
    assert [c.name for c in read_rows(Calendar, {"account__name": account.name})] == ["x"]
    assert read_row(Calendar, {"account": account}).name == "x"
    accounts = Account.objects.filter(pk=account.pk).values("pk")
    assert [c.name for c in read_rows(Calendar, {"account_id__in": accounts})] == ["x"]
    assert read_values(Calendar, {"account": account}, ("name",)) == [("x",)]


def test_writes_together_are_one_round_trip_and_one_transaction(account):
    lease = SyncLease.objects.create(account=account, holder="1:w:x", expires_at=WHEN)
    run = SyncRun.objects.create(account=account, trigger="api", state="running")
    calendar = make_calendar(account, name="kept")
    release = Update(SyncLease, {"account_id": account.pk, "holder": "1:w:x"}, {"holder": ""})
    ended = Update(SyncRun, {"pk": run.pk}, {"state": "succeeded", "finished_at": WHEN})
    # A statement written by hand goes along.
    table = connection.ops.quote_name(Calendar._meta.db_table)
    rename = "UPDATE " + table + " SET name = %s WHERE id = %s"

    with CaptureQueriesContext(connection) as queries:
        assert write_together(release, Statement(rename, ["renamed", calendar.pk]), ended) == 1
    assert len(queries) == (1 if connection.vendor == "postgresql" else 3)
    assert SyncLease.objects.get(pk=lease.pk).holder == ""
    assert SyncRun.objects.get(pk=run.pk).state == "succeeded"
    assert Calendar.objects.get(pk=calendar.pk).name == "renamed"
    # The count is the last update's; one that cannot match anything is not sent.
    nothing = Update(Calendar, {"pk__in": []}, {"name": "x"})
    assert write_together(ended, nothing) == 0
    assert write_together(nothing, Update(SyncRun, {"pk": -1}, {"error": "x"})) == 0
    assert write_together() == 0

    # A failing update undoes the writes before it, statements written by hand too.
    taken = Update(SyncLease, {"pk": lease.pk}, {"holder": "2:w:y"})
    too_long = Update(SyncRun, {"pk": run.pk}, {"state": "x" * 17})
    with pytest.raises(DataError), transaction.atomic():
        write_together(taken, Statement(rename, ["lost", calendar.pk]), too_long)
    assert SyncLease.objects.get(pk=lease.pk).holder == ""
    assert Calendar.objects.get(pk=calendar.pk).name == "renamed"


def test_updates_together_with_a_shape_for_the_orm(account):
    calendar = make_calendar(account, name="old")
    by_orm = Update(Calendar, {"account__name": account.name}, {"name": F("color")})
    stamped = Update(Calendar, {"pk": calendar.pk}, {"last_synced_at": WHEN})
    assert write_together(by_orm, stamped) == 1
    calendar.refresh_from_db()
    assert (calendar.name, calendar.last_synced_at) == (calendar.color, WHEN)
