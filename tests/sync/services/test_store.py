"""Storing a batch of changes (sync.services.store)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calendars.models import Event
from sync import services
from sync.remote import ChangeBatch, RemoteEvent, RemoteObject
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
    sql = [q["sql"] for q in queries.captured_queries]
    writes = [i for i, q in enumerate(sql) if q.startswith(("DELETE", "INSERT", "UPDATE"))]
    # The deletions and the 501 events (500 rows an INSERT) between one SAVEPOINT and its
    # release: all of the batch is stored, or none of it.
    assert sum(sql[i].startswith("DELETE") for i in writes) >= 1
    assert sum(sql[i].startswith("INSERT") for i in writes) == 2
    savepoints = [i for i, q in enumerate(sql) if q.startswith(("SAVEPOINT", "RELEASE"))]
    assert savepoints[0] < writes[0] and writes[-1] < savepoints[-1]
