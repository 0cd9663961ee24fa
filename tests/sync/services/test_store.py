"""Storing a batch of changes (sync.services.store)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calendars.models import Event
from sync import services
from sync.remote import ChangeBatch, RemoteEvent, RemoteObject
from sync.services.store import EVENT_FIELDS
from tests.factories import make_account, make_calendar, make_user

pytestmark = pytest.mark.django_db


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
    sql = [q["sql"].lstrip() for q in queries.captured_queries]
    writes = [i for i, q in enumerate(sql) if q.startswith(("DELETE", "INSERT", "UPDATE"))]
    # The deletions and the 501 events (500 rows an INSERT) between one SAVEPOINT and its
    # release: all of the batch is stored, or none of it.
    assert sum(sql[i].startswith("DELETE") for i in writes) >= 1
    assert sum(sql[i].startswith("INSERT") for i in writes) == 2
    savepoints = [i for i, q in enumerate(sql) if q.startswith(("SAVEPOINT", "RELEASE"))]
    assert savepoints[0] < writes[0] and writes[-1] < savepoints[-1]


def _stored(calendar) -> list[tuple]:
    fields = [f for f in EVENT_FIELDS if f != "updated_at"]
    rows = Event.objects.filter(calendar=calendar).order_by("uid", "recurrence_id")
    return list(rows.values_list("uid", "recurrence_id", "sync_state", "deleting", *fields))


def test_the_written_out_upsert_stores_events_as_the_orm_does(monkeypatch):
    from sync import sql

    at = dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)
    series = RemoteEvent(
        uid="series",
        summary="Stand-up ☕",
        description="line one\nline 'two'",
        location='Room "4"',
        start=at,
        end=at + dt.timedelta(minutes=15),
        timezone="Europe/Berlin",
        status="CONFIRMED",
        rrule="FREQ=DAILY;COUNT=5",
        rdate=("20260405T013000Z",),
        exdate=("20260330T013000Z", "20260331T013000Z"),
        last_modified=at,
    )
    moved = RemoteEvent(uid="series", recurrence_id="2026-04-01T01:30:00+00:00", summary="Moved")
    all_day = RemoteEvent(uid="holiday", start=at, end=at + dt.timedelta(days=1), all_day=True)
    first = [
        RemoteObject(href="/cal/Series%20A.ics", etag='"1"', events=(series, moved), raw="A"),
        RemoteObject(href="/cal/holiday.ics", etag='"1"', events=(all_day,), raw="H"),
    ]
    renamed = RemoteEvent(uid="holiday", summary="Renamed", start=at, all_day=True)
    then = [
        RemoteObject(href="/cal/holiday.ics", etag='"2"', events=(renamed,), raw="H2"),
        RemoteObject(href="/cal/new.ics", etag='"1"', events=(RemoteEvent(uid="new"),), raw=""),
    ]

    def story(calendar) -> list:
        created = services.events_apply(calendar=calendar, batch=ChangeBatch(objects=first))
        holiday = Event.objects.get(calendar=calendar, uid="holiday").pk
        plan = services.events_apply(calendar=calendar, batch=ChangeBatch(objects=then))
        new = Event.objects.get(calendar=calendar, uid="new").pk
        ids = (plan.created_ids, plan.updated_ids) == ([new], [holiday])
        return [len(created.created_ids), ids, _stored(calendar)]

    account = make_account(make_user())
    assert sql.in_use()  # the suite runs on PostgreSQL
    by_sql = story(make_calendar(account))
    monkeypatch.setattr(sql, "in_use", lambda: False)
    by_orm = story(make_calendar(account))

    assert by_sql == by_orm
    created, ids_in_order, rows = by_sql
    assert (created, ids_in_order) == (3, True)
    holiday = next(r for r in rows if r[0] == "holiday")
    assert holiday[4:7] == ("/cal/holiday.ics", '"2"', "Renamed")
    series_row = next(r for r in rows if r[:2] == ("series", ""))
    assert series_row[2:4] == ("synced", False)
    assert series_row[-4:-2] == (["20260405T013000Z"], ["20260330T013000Z", "20260331T013000Z"])
