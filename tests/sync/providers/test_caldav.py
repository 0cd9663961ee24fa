"""CalDAV sync against real Radicale and Xandikos: what a user sees after each sync.

Every scenario runs against both servers. A counting proxy sits in front of the server where a
test holds Caly to its request budget.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calendars.models import Calendar, Event
from sync.models import SyncRun
from tests.support.caldav_servers import vevent
from tests.sync.providers.caldav_helpers import (
    STALE_TOKENS,
    calendar_of,
    connect,
    counts,
    new_calendar,
    only,
    rename_calendar,
    rows,
    run_sync,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
UTC = dt.UTC


def reads_events(queries: CaptureQueriesContext) -> bool:
    return any('FROM "calendars_event"' in q["sql"] for q in queries.captured_queries)


def seed(server, cal: str, count: int, summary: str | None = "Meeting") -> None:
    """Events e0…e{count-1}; summaries "Meeting i" (or, with summary=None, the UID)."""
    for i in range(count):
        text = f"{summary} {i}" if summary else ""
        server.put(cal, f"e{i}.ics", vevent(f"e{i}@example.com", summary=text))


def test_first_sync_then_only_changes_within_the_request_budget(user, server, cal, proxy):
    seed(server, cal, 3)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    proxy.requests.clear()

    assert counts(run_sync(account)) == ("succeeded", 3, 0, 0)
    # The calendar list, then one sync-collection that brings the objects along (Xandikos
    # answers calendar-data there with 404: one multiget then fetches them).
    assert [(r.method, r.report) for r in proxy.requests] == [
        ("PROPFIND", ""),
        ("REPORT", "sync-collection"),
    ] + ([("REPORT", "calendar-multiget")] if server.kind == "xandikos" else [])
    calendar = calendar_of(account, cal)
    first = rows(calendar)
    assert {k[0]: e.summary for k, e in first.items()} == {
        f"e{i}@example.com": f"Meeting {i}" for i in range(3)
    }

    proxy.requests.clear()
    server.put(cal, "e1.ics", vevent("e1@example.com", summary="Moved"))
    assert counts(run_sync(account)) == ("succeeded", 0, 1, 0)
    assert [(r.method, r.report, r.hrefs) for r in proxy.requests] == [
        ("PROPFIND", "", 0),
        ("REPORT", "sync-collection", 0),
        ("REPORT", "calendar-multiget", 1),
    ]
    after = rows(calendar)
    assert after[("e1@example.com", "")].summary == "Moved"
    assert {k: e.pk for k, e in after.items()} == {k: e.pk for k, e in first.items()}
    assert after[("e0@example.com", "")].updated_at == first[("e0@example.com", "")].updated_at

    proxy.requests.clear()
    with CaptureQueriesContext(connection) as queries:
        assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
    assert len(proxy.requests) == 2
    # An empty sync-collection answer: the stored events are not even read.
    assert not reads_events(queries)

    server.delete(cal, "e2.ics")
    server.put(cal, "e3.ics", vevent("e3@example.com"))
    assert counts(run_sync(account)) == ("succeeded", 1, 0, 1)
    assert sorted(k[0] for k in rows(calendar)) == [
        "e0@example.com",
        "e1@example.com",
        "e3@example.com",
    ]


def test_hrefs_with_at_signs_match_however_the_server_spells_them(user, server, cal):
    """Radicale lists `me%40example.com.ics`, Xandikos `me@example.com.ics`."""
    server.put(cal, "me@example.com.ics", vevent("me@example.com"))
    server.put(cal, "you@example.com.ics", vevent("you@example.com"))
    account = connect(user, server)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 2, 0, 0)
    calendar = calendar_of(account, cal)
    before = rows(calendar)

    Calendar.objects.filter(pk=calendar.pk).update(sync_token=STALE_TOKENS[server.kind])
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
    server.put(cal, "me@example.com.ics", vevent("me@example.com", summary="Changed"))
    server.delete(cal, "you@example.com.ics")
    assert counts(run_sync(account)) == ("succeeded", 0, 1, 1)
    after = rows(calendar)
    assert after[("me@example.com", "")].pk == before[("me@example.com", "")].pk
    assert after[("me@example.com", "")].href.endswith("/me@example.com.ics")


def test_invalid_token_resyncs_fully_keeping_rows(user, server, cal, proxy):
    seed(server, cal, 4, summary=None)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 4, 0, 0)
    calendar = calendar_of(account, cal)
    before = rows(calendar)

    # Meanwhile on the server: one changed, one deleted, one added; and our token went stale.
    server.put(cal, "e1.ics", vevent("e1@example.com", summary="Changed"))
    server.delete(cal, "e2.ics")
    server.put(cal, "e4.ics", vevent("e4@example.com"))
    Calendar.objects.filter(pk=calendar.pk).update(sync_token=STALE_TOKENS[server.kind])

    run = run_sync(account)
    assert counts(run) == ("succeeded", 1, 1, 1)
    after = rows(calendar)
    for uid in ("e0@example.com", "e1@example.com", "e3@example.com"):
        assert after[(uid, "")].pk == before[(uid, "")].pk
    for uid in ("e0@example.com", "e3@example.com"):
        assert after[(uid, "")].updated_at == before[(uid, "")].updated_at
    assert after[("e1@example.com", "")].summary == "Changed"
    assert ("e2@example.com", "") not in after

    # Any failing sync-collection with a token is treated the same: compare, write nothing.
    proxy.reject_tokens = True
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
    proxy.reject_tokens = False
    assert Calendar.objects.get(pk=calendar.pk).sync_token != STALE_TOKENS[server.kind]
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)


@pytest.mark.parametrize("how", ["hidden", "refused"])
def test_servers_without_sync_collection_use_ctag_and_etags(user, server, cal, proxy, how):
    proxy.hide_sync = how == "hidden"
    proxy.refuse_sync = how == "refused"
    seed(server, cal, 4)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    proxy.requests.clear()

    assert counts(run_sync(account)) == ("succeeded", 4, 0, 0)
    calendar = calendar_of(account, cal)
    assert calendar.sync_token == "" and calendar.ctag
    first = rows(calendar)

    assert (calendar.sync_refused_at is not None) == (how == "refused")
    proxy.requests.clear()
    with CaptureQueriesContext(connection) as queries:
        assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
    # Unchanged ctag, which came with the calendar list: nothing else is asked, no stored event
    # read. A server that refused sync-collection is not asked for it again for a day.
    assert [(r.method, r.report) for r in proxy.requests] == [("PROPFIND", "")]
    assert not reads_events(queries)

    server.put(cal, "e1.ics", vevent("e1@example.com", summary="Moved"))
    server.delete(cal, "e2.ics")
    server.put(cal, "e9.ics", vevent("e9@example.com"))
    proxy.requests.clear()
    assert counts(run_sync(account)) == ("succeeded", 1, 1, 1)
    # The calendar list, every etag, one multiget of the changed and the new object: as many
    # requests as with sync-collection.
    assert [(r.method, r.report, r.hrefs) for r in proxy.requests] == [
        ("PROPFIND", "", 0),
        ("PROPFIND", "", 0),
        ("REPORT", "calendar-multiget", 2),
    ]
    after = rows(calendar)
    assert after[("e1@example.com", "")].summary == "Moved"
    assert after[("e0@example.com", "")].updated_at == first[("e0@example.com", "")].updated_at
    assert sorted(k[0] for k in after) == [
        "e0@example.com",
        "e1@example.com",
        "e3@example.com",
        "e9@example.com",
    ]


@pytest.mark.parametrize("sync_collection", [True, False])
def test_first_sync_too_big_for_one_answer_comes_in_batches(
    user, server, cal, proxy, settings, sync_collection
):
    """Radicale refuses a REPORT with more than 10,000 VEVENTs of data (HTTP 400)."""
    settings.CALY_SYNC_BATCH_SIZE = 2
    proxy.refuse_bulk_data = True
    proxy.hide_sync = not sync_collection
    seed(server, cal, 5, summary=None)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    proxy.requests.clear()
    assert counts(run_sync(account)) == ("succeeded", 5, 0, 0)
    assert [r.hrefs for r in proxy.requests if r.report == "calendar-multiget"] == [2, 2, 1]
    server.put(cal, "e0.ics", vevent("e0@example.com", summary="Changed"))
    assert counts(run_sync(account)) == ("succeeded", 0, 1, 0)


def test_truncated_sync_answers_are_continued(user, server, cal, proxy):
    proxy.page_size = 2
    seed(server, cal, 5, summary=None)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    proxy.requests.clear()
    assert counts(run_sync(account)) == ("succeeded", 5, 0, 0)
    assert proxy.count(report="sync-collection") == 3

    for i in range(3):
        server.put(cal, f"e{i}.ics", vevent(f"e{i}@example.com", summary="Changed"))
    server.delete(cal, "e4.ics")
    assert counts(run_sync(account)) == ("succeeded", 0, 3, 1)

    # A full listing after a stale token comes in pages too; none of it may read as deleted.
    calendar = calendar_of(account, cal)
    Calendar.objects.filter(pk=calendar.pk).update(sync_token=STALE_TOKENS[server.kind])
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
    assert len(rows(calendar)) == 4


def test_empty_listing_does_not_wipe_a_calendar(user, server, cal, proxy):
    seed(server, cal, 3, summary=None)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 3, 0, 0)
    calendar = calendar_of(account, cal)

    # The token is refused and every listing of the calendar comes back empty, yet the
    # server's sync state has not moved: a spurious answer.
    proxy.reject_tokens = True
    proxy.empty_listing_of = f"{server.home_path}{cal}/"
    run = run_sync(account)
    assert run.state == "failed"
    assert "listed no events" in run.error and "nothing was deleted" in run.error
    assert len(rows(calendar)) == 3

    # Really emptied on the server: the listing is empty twice and the token moved.
    proxy.empty_listing_of = ""
    for i in range(3):
        server.delete(cal, f"e{i}.ics")
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 3)
    assert rows(calendar) == {}


SERIES = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Caly tests//EN\r
BEGIN:VEVENT\r
UID:series@example.com\r
DTSTAMP:20260101T000000Z\r
DTSTART;TZID=Europe/Berlin:20260105T090000\r
DTEND;TZID=Europe/Berlin:20260105T100000\r
RRULE:FREQ=WEEKLY;COUNT=6\r
EXDATE;TZID=Europe/Berlin:20260112T090000\r
RDATE;TZID=Europe/Berlin:20260108T090000\r
SUMMARY:Weekly\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:series@example.com\r
DTSTAMP:20260101T000000Z\r
RECURRENCE-ID;TZID=Europe/Berlin:20260119T090000\r
DTSTART;TZID=Europe/Berlin:20260119T140000\r
DTEND;TZID=Europe/Berlin:20260119T150000\r
SUMMARY:Weekly (moved)\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:series@example.com\r
DTSTAMP:20260101T000000Z\r
RECURRENCE-ID;TZID=Europe/Berlin:20260126T090000\r
DTSTART;TZID=Europe/Berlin:20260126T090000\r
DTEND;TZID=Europe/Berlin:20260126T100000\r
STATUS:CANCELLED\r
SUMMARY:Weekly\r
END:VEVENT\r
END:VCALENDAR\r
"""

ZONES = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Caly tests//EN\r
BEGIN:VTIMEZONE\r
TZID:Office Time\r
BEGIN:STANDARD\r
DTSTART:19700101T000000\r
TZOFFSETFROM:+0530\r
TZOFFSETTO:+0530\r
END:STANDARD\r
END:VTIMEZONE\r
BEGIN:VEVENT\r
UID:custom@example.com\r
DTSTAMP:20260101T000000Z\r
DTSTART;TZID=Office Time:20260105T090000\r
DTEND;TZID=Office Time:20260105T100000\r
END:VEVENT\r
END:VCALENDAR\r
"""


def test_recurrence_and_time_zones_are_stored_as_instants(user, api, server, cal):
    server.put(cal, "series.ics", SERIES)
    server.put(cal, "custom.ics", ZONES)
    server.put(
        cal,
        "windows.ics",
        vevent(
            "windows@example.com",
            start="20260705T090000",
            end="20260705T100000",
        )
        .replace("DTSTART:", "DTSTART;TZID=W. Europe Standard Time:")
        .replace("DTEND:", "DTEND;TZID=W. Europe Standard Time:"),
    )
    server.put(
        cal,
        "floating.ics",
        vevent("floating@example.com", start="20260105T090000", end="20260105T100000"),
    )
    server.put(
        cal,
        "allday.ics",
        vevent("allday@example.com", start="20260110", end="20260111")
        .replace("DTSTART:", "DTSTART;VALUE=DATE:")
        .replace("DTEND:", "DTEND;VALUE=DATE:"),
    )
    account = connect(user, server)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 7, 0, 0)
    stored = rows(calendar_of(account, cal))

    master = stored[("series@example.com", "")]
    assert master.rrule == "FREQ=WEEKLY;COUNT=6"
    assert (master.exdate, master.rdate) == (["20260112T080000Z"], ["20260108T080000Z"])
    assert master.start == dt.datetime(2026, 1, 5, 8, tzinfo=UTC)
    assert master.timezone == "Europe/Berlin"
    moved = stored[("series@example.com", "20260119T080000Z")]
    assert moved.start == dt.datetime(2026, 1, 19, 13, tzinfo=UTC)
    assert stored[("series@example.com", "20260126T080000Z")].status == "CANCELLED"
    assert stored[("custom@example.com", "")].start == dt.datetime(2026, 1, 5, 3, 30, tzinfo=UTC)
    windows = stored[("windows@example.com", "")]
    assert (windows.start, windows.timezone) == (
        dt.datetime(2026, 7, 5, 7, tzinfo=UTC),
        "Europe/Berlin",
    )
    assert stored[("floating@example.com", "")].start == dt.datetime(2026, 1, 5, 9, tzinfo=UTC)
    allday = stored[("allday@example.com", "")]
    assert allday.all_day and allday.start == dt.datetime(2026, 1, 10, tzinfo=UTC)

    # The window January 2026 shows the series occurrence by occurrence.
    calendar_id = calendar_of(account, cal).pk
    response = api.get(
        f"/api/events/?calendar={calendar_id}&start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00Z"
    )
    assert response.status_code == 200, response.json()
    series = [
        (e["start"], e["summary"])
        for e in response.json()["results"]
        if e["uid"] == "series@example.com"
    ]
    # Jan 12 is excluded (EXDATE), Jan 8 added (RDATE), Jan 19 moved, Jan 26 cancelled.
    assert series == [
        ("2026-01-05T08:00:00Z", "Weekly"),
        ("2026-01-08T08:00:00Z", "Weekly"),
        ("2026-01-19T13:00:00Z", "Weekly (moved)"),
    ]


def test_text_is_stored_faithfully_and_malformed_objects_are_skipped(user, api, server, cal, proxy):
    description = ("Überprüfung — 会議 ✓ " * 8000).strip()
    server.put(
        cal,
        "unicode.ics",
        vevent(
            "unicode@example.com", summary="Café ☕ Ünïcödé", extra=f"DESCRIPTION:{description}"
        ),
    )
    server.put(cal, "series.ics", SERIES)
    server.put(cal, "fine.ics", vevent("fine@example.com"))
    server.put(cal, "broken.ics", vevent("broken@example.com"))
    proxy.corrupt = {f"{server.home_path}{cal}/broken.ics"}
    broken_on_server = []
    if server.kind == "xandikos":  # Radicale refuses such objects; Xandikos stores them
        server.put(
            cal,
            "nostart.ics",
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\n"
            "UID:nostart@example.com\r\nDTSTAMP:20260101T000000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        )
        broken_on_server.append("nostart.ics")
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)

    run = run_sync(account)
    assert run.state == "succeeded", run.error
    assert run.created == 5  # unicode, fine, and the series' master and two overrides
    skipped = sorted(s["href"].rsplit("/", 1)[1] for s in run.skipped)
    assert skipped == sorted(["broken.ics", *broken_on_server])
    assert all(s["reason"] for s in run.skipped)
    shown = api.get(f"/api/sync/{run.pk}/").json()
    assert sorted(s["href"].rsplit("/", 1)[1] for s in shown["skipped"]) == skipped

    stored = rows(calendar_of(account, cal))
    unicode_event = stored[("unicode@example.com", "")]
    assert unicode_event.summary == "Café ☕ Ünïcödé"
    assert unicode_event.description == description
    served = server.session.get(server.calendar_url(cal) + "unicode.ics").content.decode()
    assert unicode_event.raw.replace("\r\n", "\n") == served.replace("\r\n", "\n")
    series_rows = [e for k, e in stored.items() if k[0] == "series@example.com"]
    assert len(series_rows) == 3
    assert all("RECURRENCE-ID" in e.raw and "RRULE" in e.raw for e in series_rows)


def test_calendars_added_renamed_removed_and_unselected(user, api, server, cal, proxy):
    server.put(cal, "a.ics", vevent("a@example.com"))
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 1, 0, 0)

    second = new_calendar(server, display_name="Second")
    try:
        server.put(second, "b.ics", vevent("b@example.com"))
        run_sync(account)
        added = calendar_of(account, second)
        assert added.name == "Second" and added.selected
        assert [e.uid for e in Event.objects.filter(calendar=added)] == ["b@example.com"]

        # Renamed on the server.
        rename_calendar(server, second, "Renamed")
        # Unselected by the user: not synced any more, not even asked about.
        patched = api.patch(f"/api/calendars/{added.pk}/", {"selected": False}, format="json")
        assert patched.status_code == 200
        server.put(second, "c.ics", vevent("c@example.com"))
        proxy.requests.clear()
        assert run_sync(account).state == "succeeded"
        added.refresh_from_db()
        assert added.name == "Renamed"
        assert [e.uid for e in Event.objects.filter(calendar=added)] == ["b@example.com"]
        assert not [r for r in proxy.requests if r.path.rstrip("/").endswith(second)]
    finally:
        server.delete_calendar(second)

    # Removed on the server: the next sync keeps it, events and all, and says since when it is
    # missing (one listing without it may be the server's hiccup)...
    assert run_sync(account).state == "succeeded"
    assert api.get(f"/api/calendars/{added.pk}/").json()["missing_since"] is not None
    assert [e.uid for e in Event.objects.filter(calendar=added)] == ["b@example.com"]
    # ...and the one after, which does not list it either, deletes it with its events.
    assert run_sync(account).state == "succeeded"
    assert not Calendar.objects.filter(pk=added.pk).exists()
    assert not Event.objects.filter(uid="b@example.com").exists()
    assert SyncRun.objects.filter(account=account, state="failed").count() == 0


def test_a_calendar_left_out_of_one_listing_keeps_its_events_and_their_ids(
    user, api, server, cal, proxy
):
    seed(server, cal, 2)
    other = new_calendar(server, display_name="Other")
    try:
        account = connect(user, server, base_url=proxy.url)
        only(account, cal, other)
        assert counts(run_sync(account)) == ("succeeded", 2, 0, 0)
        calendar = calendar_of(account, cal)
        ids = {key: event.pk for key, event in rows(calendar).items()}

        proxy.unlisted = f"{server.home_path}{cal}/"  # one answer without it
        assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
        assert api.get(f"/api/calendars/{calendar.pk}/").json()["missing_since"] is not None

        proxy.unlisted = ""  # listed again: nothing was lost, nothing is fetched again
        assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)
        assert api.get(f"/api/calendars/{calendar.pk}/").json()["missing_since"] is None
        assert {key: event.pk for key, event in rows(calendar).items()} == ids
    finally:
        server.delete_calendar(other)


@pytest.mark.parametrize("header", ["120", "http-date"])
def test_a_busy_server_is_asked_again_when_its_retry_after_says(header):
    """503 with Retry-After in either form RFC 9110 allows: seconds, or an HTTP date."""
    import threading
    from email.utils import format_datetime
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sync.providers.base import TransientError
    from sync.providers.caldav.dav import DAVSession

    if header == "http-date":
        header = format_datetime(dt.datetime.now(UTC) + dt.timedelta(seconds=120), usegmt=True)

    class Busy(BaseHTTPRequestHandler):
        def do_PROPFIND(self):
            self.send_response(503)
            self.send_header("Retry-After", header)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    busy = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{busy.server_port}/dav/"
    try:
        with pytest.raises(TransientError, match="HTTP 503") as caught:
            DAVSession(url=url, username="", password="").send("PROPFIND", url, "", depth="0")
    finally:
        busy.shutdown()
        busy.server_close()
    assert caught.value.retry_after == pytest.approx(120, abs=2)
