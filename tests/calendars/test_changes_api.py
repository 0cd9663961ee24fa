"""The change feed, `GET /api/changes/`: every current event, then each upsert and deletion after
it, oldest first, never skipping one — concurrent transactions included — on real PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from calendars.models import Event
from tests.factories import make_account, make_calendar, make_event, make_user
from tests.support.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def read_all(api, cursor: str | None = None, limit: int = 100) -> tuple[list[dict], str]:
    """Every page from `cursor` on, until the feed says there is no more."""
    changes = []
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = api.get("/api/changes/" + query)
        assert response.status_code == 200, response.json()
        body = response.json()
        changes += body["changes"]
        cursor = body["cursor"]
        if not body["more"]:
            return changes, cursor


def read_until(api, cursor: str | None, count: int) -> tuple[list[dict], str]:
    """Changes from `cursor` on until there are `count` of them. A change shows once every
    transaction older than it has ended, on any database of the server (other test runs
    share it), so it may take a moment."""
    changes = []

    def enough():
        nonlocal cursor
        page, cursor = read_all(api, cursor)
        changes.extend(page)
        return len(changes) >= count

    wait_for(enough, timeout=30, what=f"{count} changes in the feed")
    return changes, cursor


def described(changes: list[dict]) -> list[tuple[str, str]]:
    return [(c["type"], c["event"]["uid"]) for c in changes]


def test_the_current_events_then_every_upsert_and_deletion_after_them(api, user):
    calendar = make_calendar(make_account(user))
    first, second, third = (make_event(calendar, summary=f"e{i}") for i in range(3))
    other = make_calendar(make_account(make_user()))
    make_event(other)  # someone else's: never in this user's feed

    listed, cursor = read_all(api, limit=2)  # paged: the current events, whatever is running
    assert sorted(described(listed)) == sorted(("upsert", e.uid) for e in (first, second, third))

    Event.objects.filter(pk=second.pk).update(summary="changed")
    third_id = third.pk
    third.delete()
    fourth = make_event(calendar)
    changes, cursor = read_until(api, cursor, 3)
    assert described(changes) == [
        ("upsert", second.uid),
        ("delete", third.uid),
        ("upsert", fourth.uid),
    ]
    assert changes[0]["event"]["summary"] == "changed"
    assert changes[1]["event"] == {
        "id": third_id,
        "calendar": calendar.pk,
        "uid": third.uid,
        "recurrence_id": None,
    }
    assert read_all(api, cursor)[0] == []  # nothing new


def test_a_change_committing_after_a_reader_took_its_cursor_is_not_skipped(api, user):
    """T1 writes first but commits last; T2 writes and commits in between. A feed ordered by a
    plain auto-increment id would hand out T2's change, move its cursor past T1's, and never
    show T1's: here both arrive."""
    calendar = make_calendar(make_account(user))
    _, cursor = read_all(api)
    t1_wrote, t1_may_commit = threading.Event(), threading.Event()

    def slow_writer():
        with transaction.atomic():
            make_event(calendar, uid="t1-first-to-write")
            t1_wrote.set()
            t1_may_commit.wait(timeout=30)
        connection.close()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert t1_wrote.wait(timeout=30)
    make_event(calendar, uid="t2-first-to-commit")  # its own transaction, committed now

    seen, cursor = read_all(api, cursor)  # while T1 is still open
    t1_may_commit.set()
    writer.join(timeout=30)
    later, cursor = read_until(api, cursor, 2 - len(seen))
    uids = [uid for _, uid in described(seen + later)]
    assert sorted(uids) == ["t1-first-to-write", "t2-first-to-commit"]


def test_an_event_deleted_through_caly_is_a_deletion_at_once(api, user):
    calendar = make_calendar(make_account(user))
    event = make_event(calendar)
    _, cursor = read_all(api)
    Event.objects.filter(pk=event.pk).update(deleting=True)
    changes, _ = read_until(api, cursor, 1)
    assert described(changes) == [("delete", event.uid)]


def test_a_cursor_older_than_the_kept_history_is_a_410(api, settings):
    _, cursor = read_all(api)
    snapshot, txid, change, _, after = json.loads(base64.urlsafe_b64decode(cursor))
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).isoformat()
    stale = base64.urlsafe_b64encode(json.dumps([snapshot, txid, change, old, after]).encode())
    response = api.get(f"/api/changes/?cursor={stale.decode()}")
    assert response.status_code == 410 and "start again" in response.json()["detail"]
    assert api.get("/api/changes/?cursor=nonsense").json()["cursor"]


def test_the_feed_needs_a_login():
    assert APIClient().get("/api/changes/").status_code in (401, 403)
