"""Private iCalendar feeds: `feed_url` of a calendar and the merged `GET /api/feed/`, read
without a login, parsed as calendar clients parse them, conditional, rotatable, private."""

from __future__ import annotations

import datetime as dt
import json

import caldav
import icalendar
import pytest
from django.test import Client
from django.utils.http import http_date
from rest_framework.test import APIClient

from calendars.models import Account
from tests.factories import make_account, make_calendar, make_event, make_user

pytestmark = pytest.mark.django_db

BERLIN = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:STANDARD
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
END:DAYLIGHT
END:VTIMEZONE
"""


def ics(*vevents: str) -> str:
    text = "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//Example//Server//EN\n" + BERLIN
    text += "".join(vevents) + "END:VCALENDAR\n"
    return text.replace("\n", "\r\n")


def vevent(uid: str, summary: str, start: str, *extra: str) -> str:
    lines = [
        "BEGIN:VEVENT",
        f"UID:{uid}",
        "DTSTAMP:20260101T000000Z",
        f"DTSTART;TZID=Europe/Berlin:{start}",
        f"SUMMARY:{summary}",
        *extra,
        "END:VEVENT",
    ]
    return "\n".join(lines) + "\n"


STANDUP = ics(
    vevent(
        "standup@example.com",
        "Standup",
        "20260105T090000",
        "RRULE:FREQ=WEEKLY;BYDAY=MO",
        "X-EXAMPLE-NOTE:kept as the server wrote it",
    ),
    vevent(
        "standup@example.com",
        "Standup (moved)",
        "20260112T100000",
        "RECURRENCE-ID;TZID=Europe/Berlin:20260112T090000",
    ),
)
AT = dt.datetime(2026, 1, 5, 8, tzinfo=dt.UTC)


def caldav_calendar(owner, **fields):
    """A CalDAV calendar holding a weekly series with a moved occurrence (one object, two
    rows), a single event, and an event being deleted through Caly."""
    calendar = make_calendar(make_account(owner), timezone="Europe/Berlin", **fields)
    for recurrence_id, summary in (("", "Standup"), ("20260112T080000Z", "Standup (moved)")):
        make_event(
            calendar,
            uid="standup@example.com",
            recurrence_id=recurrence_id,
            href="/work/standup.ics",
            summary=summary,
            start=AT,
            raw=STANDUP,
        )
    review = ics(vevent("review@example.com", "Review", "20260106T140000"))
    make_event(calendar, uid="review@example.com", summary="Review", start=AT, raw=review)
    gone = ics(vevent("gone@example.com", "Being deleted", "20260107T140000"))
    make_event(
        calendar, uid="gone@example.com", summary="Being deleted", start=AT, raw=gone, deleting=True
    )
    return calendar


def google_calendar(owner):
    account = make_account(owner, provider=Account.Provider.GOOGLE, url="")
    calendar = make_calendar(account, remote_id="team@group.calendar.google.com")
    make_event(
        calendar,
        uid="lunch@google.com",
        href="lunch1",
        summary="Lunch",
        start=dt.datetime(2026, 1, 7, 17, tzinfo=dt.UTC),
        end=dt.datetime(2026, 1, 7, 18, tzinfo=dt.UTC),
        timezone="America/New_York",
        raw=json.dumps({"id": "lunch1", "summary": "Lunch", "iCalUID": "lunch@google.com"}),
    )
    return calendar


def fetch(url: str, **headers):
    """The feed as a calendar client fetches it: no login."""
    return Client().get(url, headers=headers)


def body(response) -> bytes:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/calendar")
    return b"".join(response.streaming_content)


def summaries(calendar: icalendar.Calendar) -> list[str]:
    return sorted(str(e["SUMMARY"]) for e in calendar.walk("VEVENT"))


def test_a_calendars_feed_reads_without_login_in_icalendar_and_python_caldav(api, user):
    calendar = caldav_calendar(user)
    listed = api.get("/api/calendars/").json()["results"]
    (url,) = [c["feed_url"] for c in listed if c["id"] == calendar.pk]
    assert url.startswith("http://testserver/feeds/") and url.endswith(".ics")

    text = body(fetch(url))
    parsed = icalendar.Calendar.from_ical(text)
    assert summaries(parsed) == ["Review", "Standup", "Standup (moved)"]
    # One VTIMEZONE although both objects brought it; the object's own lines are kept.
    assert [str(z["TZID"]) for z in parsed.walk("VTIMEZONE")] == ["Europe/Berlin"]
    assert b"X-EXAMPLE-NOTE:kept as the server wrote it" in text
    (moved,) = [e for e in parsed.walk("VEVENT") if "RECURRENCE-ID" in e]
    assert moved["RECURRENCE-ID"].dt == dt.datetime(2026, 1, 12, 8, tzinfo=dt.UTC)

    # python-caldav reads calendar data through its own fix-ups and parser.
    as_caldav = caldav.Event(data=text.decode()).icalendar_instance
    assert summaries(as_caldav) == ["Review", "Standup", "Standup (moved)"]


def test_the_merged_feed_holds_every_selected_calendar_google_rows_included(api, user):
    caldav_calendar(user)
    google_calendar(user)
    hidden = make_calendar(make_account(user), selected=False)
    make_event(hidden, summary="Not synced", start=AT)

    url = api.get("/api/feed/").json()["url"]
    assert api.get("/api/feed/").json()["url"] == url  # the same until rotated
    parsed = icalendar.Calendar.from_ical(body(fetch(url)))
    assert summaries(parsed) == ["Lunch", "Review", "Standup", "Standup (moved)"]
    (lunch,) = [e for e in parsed.walk("VEVENT") if str(e["UID"]) == "lunch@google.com"]
    assert lunch["DTSTART"].params["TZID"] == "America/New_York"
    assert lunch["DTSTART"].dt.astimezone(dt.UTC) == dt.datetime(2026, 1, 7, 17, tzinfo=dt.UTC)
    zones = sorted(str(z["TZID"]) for z in parsed.walk("VTIMEZONE"))
    assert zones == ["America/New_York", "Europe/Berlin"]
    assert summaries(caldav.Event(data=parsed.to_ical().decode()).icalendar_instance) == [
        "Lunch",
        "Review",
        "Standup",
        "Standup (moved)",
    ]


def test_a_conditional_get_answers_304_until_the_calendar_changes(api, user):
    calendar = caldav_calendar(user)
    url = api.get(f"/api/calendars/{calendar.pk}/").json()["feed_url"]
    first = fetch(url)
    body(first)
    etag, modified = first["ETag"], first["Last-Modified"]

    again = fetch(url, if_none_match=etag)
    assert again.status_code == 304
    assert again["ETag"] == etag
    assert again.content == b""
    assert fetch(url, if_modified_since=modified).status_code == 304
    assert fetch(url, if_modified_since=http_date(0)).status_code == 200

    make_event(calendar, summary="New", start=AT, raw="")
    changed = fetch(url, if_none_match=etag)
    assert changed["ETag"] != etag
    assert "New" in summaries(icalendar.Calendar.from_ical(body(changed)))


def test_rotating_a_feed_makes_the_old_url_404(api, user):
    calendar = caldav_calendar(user)
    old = api.get(f"/api/calendars/{calendar.pk}/").json()["feed_url"]
    rotated = api.post(f"/api/calendars/{calendar.pk}/rotate-feed/")
    assert rotated.status_code == 200
    new = rotated.json()["url"]
    assert new != old and rotated.json()["feed_url"] == new
    assert fetch(old).status_code == 404
    assert "Standup" in summaries(icalendar.Calendar.from_ical(body(fetch(new))))
    assert api.get(f"/api/calendars/{calendar.pk}/").json()["feed_url"] == new

    merged = api.get("/api/feed/").json()["url"]
    answer = api.post("/api/feed/rotate/")
    assert answer.status_code == 200
    assert answer.json()["url"] != merged
    assert fetch(merged).status_code == 404
    assert fetch(answer.json()["url"]).status_code == 200


def test_a_feed_shows_only_its_owners_events_and_a_wrong_secret_nothing(api, user):
    bob = make_user("bob")
    bobs = caldav_calendar(bob, name="Bob's")
    bob_api = APIClient()
    bob_api.force_authenticate(bob)
    bobs_url = bob_api.get(f"/api/calendars/{bobs.pk}/").json()["feed_url"]
    caldav_calendar(user)
    google_calendar(bob)

    # Alice can neither rotate (nor so learn) Bob's feed, nor find his events in hers.
    assert api.post(f"/api/calendars/{bobs.pk}/rotate-feed/").status_code == 404
    assert fetch(bobs_url).status_code == 200
    mine = icalendar.Calendar.from_ical(body(fetch(api.get("/api/feed/").json()["url"])))
    assert "Lunch" not in summaries(mine)
    assert bob_api.get("/api/feed/").json()["url"] != api.get("/api/feed/").json()["url"]

    secret = bobs_url.rsplit("/", 1)[1].removesuffix(".ics")
    almost = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert fetch(f"/feeds/{almost}.ics").status_code == 404
    assert fetch("/feeds/x.ics").status_code == 404
    bob.is_active = False
    bob.save()
    assert fetch(bobs_url).status_code == 404
