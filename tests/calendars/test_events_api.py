"""GET /api/events/ with start/end: occurrences in the window, recurring events expanded."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django.conf import settings as django_settings
from recurring_ical_events.occurrence import Occurrence
from rest_framework.test import APIClient

from sync.ical import parse_object
from sync.remote import ChangeBatch, RemoteObject
from sync.services import events_apply
from tests.factories import make_account, make_calendar, make_user

pytestmark = pytest.mark.django_db


def ics(*events: str, zones: str = "") -> str:
    body = "".join(events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Caly tests//EN\r\n{zones}{body}END:VCALENDAR\r\n"


def vevent(uid: str, *lines: str) -> str:
    props = "".join(f"{line}\r\n" for line in lines)
    return f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n{props}END:VEVENT\r\n"


def store(calendar, href: str, raw: str) -> None:
    """Store an object the way a sync does."""
    obj = RemoteObject(href=href, etag='"1"', events=parse_object(raw), raw=raw)
    events_apply(calendar=calendar, batch=ChangeBatch(objects=[obj]))


@pytest.fixture
def calendar(user):
    return make_calendar(make_account(user), timezone="Europe/Berlin")


def window(api, start: str, end: str, **extra) -> list[dict]:
    params = "&".join(f"{k}={v}" for k, v in {"start": start, "end": end, **extra}.items())
    response = api.get(f"/api/events/?{params}")
    assert response.status_code == 200, response.json()
    return response.json()["results"]


SERIES = ics(
    vevent(
        "series@example.com",
        "DTSTART;TZID=Europe/Berlin:20260105T090000",
        "DTEND;TZID=Europe/Berlin:20260105T100000",
        "RRULE:FREQ=WEEKLY;UNTIL=20260301T000000Z",
        "EXDATE;TZID=Europe/Berlin:20260112T090000",
        "RDATE;TZID=Europe/Berlin:20260108T090000",
        "SUMMARY:Weekly",
    ),
    vevent(
        "series@example.com",
        "RECURRENCE-ID;TZID=Europe/Berlin:20260119T090000",
        "DTSTART;TZID=Europe/Berlin:20260203T120000",
        "DTEND;TZID=Europe/Berlin:20260203T130000",
        "SUMMARY:Moved into February",
    ),
    vevent(
        "series@example.com",
        "RECURRENCE-ID;TZID=Europe/Berlin:20260126T090000",
        "DTSTART;TZID=Europe/Berlin:20260126T090000",
        "DTEND;TZID=Europe/Berlin:20260126T100000",
        "STATUS:CANCELLED",
        "SUMMARY:Weekly",
    ),
)


def test_series_expanded_with_exdate_rdate_moved_and_cancelled_instances(api, calendar):
    store(calendar, "/cal/series.ics", SERIES)
    january = window(api, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert [(e["start"], e["summary"], e["recurrence_id"]) for e in january] == [
        ("2026-01-05T08:00:00Z", "Weekly", "20260105T080000Z"),
        ("2026-01-08T08:00:00Z", "Weekly", "20260108T080000Z"),
        # Jan 12: EXDATE; Jan 19: moved to February; Jan 26: cancelled.
    ]
    assert {e["uid"] for e in january} == {"series@example.com"}
    assert all(e["end"] > e["start"] and e["rrule"] for e in january)

    february = window(api, "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z")
    assert [(e["start"], e["summary"]) for e in february] == [
        ("2026-02-02T08:00:00Z", "Weekly"),
        ("2026-02-03T11:00:00Z", "Moved into February"),
        ("2026-02-09T08:00:00Z", "Weekly"),
        ("2026-02-16T08:00:00Z", "Weekly"),
        ("2026-02-23T08:00:00Z", "Weekly"),
    ]
    moved = february[1]
    assert moved["recurrence_id"] == "20260119T080000Z"


def test_every_occurrence_in_a_window_has_an_occurrence_id_of_its_own_that_stays(api, calendar):
    store(calendar, "/cal/series.ics", SERIES)
    store(calendar, "/cal/once.ics", ics(vevent("once", "DTSTART:20260204T100000Z")))
    months = ("2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z")

    found = window(api, *months)

    keys = [e["occurrence_id"] for e in found]
    assert len(found) == 8 and len(set(keys)) == 8
    # The series' occurrences share the master's id; occurrence_id tells them apart.
    weekly = [e for e in found if e["summary"] == "Weekly"]
    assert len({e["id"] for e in weekly}) == 1 < len(weekly)
    assert window(api, *months) == found  # the same keys the next time


def test_single_events_overlapping_the_window_and_all_day_events(api, calendar):
    store(
        calendar,
        "/cal/early.ics",
        ics(vevent("early", "DTSTART:20260131T230000Z", "DTEND:20260201T010000Z")),
    )
    store(
        calendar,
        "/cal/late.ics",
        ics(vevent("late", "DTSTART:20260201T010000Z", "DTEND:20260201T020000Z")),
    )
    store(
        calendar,
        "/cal/before.ics",
        ics(vevent("before", "DTSTART:20260131T220000Z", "DTEND:20260131T230000Z")),
    )
    store(
        calendar,
        "/cal/day.ics",
        ics(vevent("day", "DTSTART;VALUE=DATE:20260201", "DTEND;VALUE=DATE:20260202")),
    )
    store(
        calendar,
        "/cal/gone.ics",
        ics(
            vevent("gone", "DTSTART:20260201T030000Z", "DTEND:20260201T040000Z", "STATUS:CANCELLED")
        ),
    )
    found = window(api, "2026-02-01T00:00:00Z", "2026-02-02T00:00:00Z")
    assert [e["uid"] for e in found] == ["early", "day", "late"]
    day = next(e for e in found if e["uid"] == "day")
    assert day["all_day"] is True
    # Read as dates: the day, and the day after it (DTEND's exclusive end).
    assert (day["start_date"], day["end_date"]) == ("2026-02-01", "2026-02-02")
    assert day["start"] == "2026-02-01T00:00:00Z"
    early = next(e for e in found if e["uid"] == "early")
    assert (early["start_date"], early["end_date"]) == (None, None)


def test_window_of_an_endless_daily_series_is_paginated(api, calendar):
    store(
        calendar,
        "/cal/daily.ics",
        ics(
            vevent(
                "daily", "DTSTART:20200101T070000Z", "DTEND:20200101T073000Z", "RRULE:FREQ=DAILY"
            )
        ),
    )
    response = api.get("/api/events/?start=2026-01-01T00:00:00Z&end=2026-06-30T00:00:00Z")
    body = response.json()
    assert response.status_code == 200
    assert len(body["results"]) == 100 and body["next"]
    rest = api.get(body["next"]).json()
    assert len(rest["results"]) == 80 and rest["next"] is None
    starts = [e["start"] for e in body["results"] + rest["results"]]
    assert len(starts) == 180 and starts == sorted(starts)
    assert starts[0] == "2026-01-01T07:00:00Z" and starts[-1] == "2026-06-29T07:00:00Z"


def test_override_stored_in_its_own_object_still_replaces_its_instance(api, calendar):
    store(
        calendar,
        "/cal/master.ics",
        ics(
            vevent(
                "split",
                "DTSTART:20260105T090000Z",
                "DTEND:20260105T100000Z",
                "RRULE:FREQ=DAILY;COUNT=3",
            )
        ),
    )
    store(
        calendar,
        "/cal/override.ics",
        ics(
            vevent(
                "split",
                "RECURRENCE-ID:20260106T090000Z",
                "DTSTART:20260106T150000Z",
                "DTEND:20260106T160000Z",
                "SUMMARY:Later that day",
            )
        ),
    )
    found = window(api, "2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z")
    assert [(e["start"], e["summary"]) for e in found] == [
        ("2026-01-05T09:00:00Z", ""),
        ("2026-01-06T15:00:00Z", "Later that day"),
        ("2026-01-07T09:00:00Z", ""),
    ]


def test_only_the_users_own_calendars(api, calendar):
    other = make_calendar(make_account(make_user("mallory")))
    store(other, "/other/x.ics", ics(vevent("theirs", "DTSTART:20260105T090000Z")))
    store(calendar, "/cal/x.ics", ics(vevent("mine", "DTSTART:20260105T090000Z")))
    assert [e["uid"] for e in window(api, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")] == [
        "mine"
    ]
    assert window(api, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", calendar=other.pk) == []


@pytest.mark.parametrize(
    "query, field",
    [
        ("start=2026-01-01T00:00:00Z", "end"),
        ("end=2026-01-01T00:00:00Z", "start"),
        ("start=2026-02-01T00:00:00Z&end=2026-01-01T00:00:00Z", "end"),
        ("start=2020-01-01T00:00:00Z&end=2026-01-01T00:00:00Z", "end"),
        ("start=yesterday&end=2026-01-01T00:00:00Z", "start"),
        ("start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00Z&cursor=nonsense", "cursor"),
    ],
)
def test_bad_windows_are_400_naming_the_field(api, query, field):
    response = api.get(f"/api/events/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def test_google_series_expand_from_their_stored_fields(api, calendar):
    """Google events keep their JSON as source; a window still expands the series, with its
    moved and cancelled instances, exactly as for an iCalendar series."""
    import json

    from sync.providers.google.events import decode_event, event_from_google

    master = {
        "id": "weekly1",
        "iCalUID": "weekly1@google.com",
        "status": "confirmed",
        "summary": "Standup",
        "start": {"dateTime": "2026-03-02T09:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-03-02T09:15:00+01:00", "timeZone": "Europe/Berlin"},
        "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=5", "EXDATE;TZID=Europe/Berlin:20260316T090000"],
    }
    moved = {
        "id": "weekly1_20260309T080000Z",
        "iCalUID": "weekly1@google.com",
        "status": "confirmed",
        "summary": "Standup (moved)",
        "recurringEventId": "weekly1",
        "originalStartTime": {"dateTime": "2026-03-09T09:00:00+01:00"},
        "start": {"dateTime": "2026-03-09T11:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-03-09T11:15:00+01:00", "timeZone": "Europe/Berlin"},
    }
    objects = [
        RemoteObject(
            href=item["id"],
            etag='"1"',
            events=(event_from_google(decode_event(json.dumps(item)), uid=item["iCalUID"]),),
            raw=json.dumps(item),
        )
        for item in (master, moved)
    ]
    events_apply(calendar=calendar, batch=ChangeBatch(objects=objects))

    found = window(api, "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")
    assert [(e["start"], e["summary"]) for e in found] == [
        ("2026-03-02T08:00:00Z", "Standup"),
        ("2026-03-09T10:00:00Z", "Standup (moved)"),
        # 16 March is excluded; the clocks change on 29 March: 09:00 Berlin is 07:00 UTC.
        ("2026-03-23T08:00:00Z", "Standup"),
        ("2026-03-30T07:00:00Z", "Standup"),
    ]
    assert {e["uid"] for e in found} == {"weekly1@google.com"}


def office_zone(offset: str) -> str:
    """A custom VTIMEZONE named "Office", as each user's server may define it differently."""
    return (
        "BEGIN:VTIMEZONE\r\nTZID:Office\r\nBEGIN:STANDARD\r\nDTSTART:19700101T000000\r\n"
        f"TZOFFSETFROM:{offset}\r\nTZOFFSETTO:{offset}\r\nTZNAME:Office\r\n"
        "END:STANDARD\r\nEND:VTIMEZONE\r\n"
    )


def test_two_users_custom_zones_of_the_same_name_keep_their_own_times(user):
    """Alice's server says "Office" is +05:00, Bob's that it is -03:00: each sees their own
    standup at 09:00 their office time, whoever's calendar was read first."""
    bob = make_user("bob")
    clients = {}
    for owner, offset in ((user, "+0500"), (bob, "-0300")):
        standup = vevent(
            "standup@example.com",
            "DTSTART;TZID=Office:20260105T090000",
            "DTEND;TZID=Office:20260105T093000",
            "RRULE:FREQ=DAILY;COUNT=3",
            "EXDATE;TZID=Office:20260106T090000",
            "SUMMARY:Standup",
        )
        store(
            make_calendar(make_account(owner)),
            "/cal/standup.ics",
            ics(standup, zones=office_zone(offset)),
        )
        clients[owner.username] = APIClient()
        clients[owner.username].force_authenticate(owner)

    seen = {
        name: [e["start"] for e in window(client, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")]
        for name, client in clients.items()
    }
    assert seen == {
        "alice": ["2026-01-05T04:00:00Z", "2026-01-07T04:00:00Z"],
        "bob": ["2026-01-05T12:00:00Z", "2026-01-07T12:00:00Z"],
    }


# --- what one request may cost ------------------------------------------------------------
def every_minute(uid: str, first: str = "20260101T000000Z") -> str:
    return ics(vevent(uid, f"DTSTART:{first}", "DURATION:PT30S", "RRULE:FREQ=MINUTELY"))


def test_window_whose_series_take_too_many_occurrences_is_400_saying_to_narrow_it(
    api, calendar, settings
):
    settings.CALY_MAX_OCCURRENCES = 1000
    store(calendar, "/cal/minutely.ics", every_minute("minutely"))
    # From the series' first occurrence to the window's end: 1,440 occurrences.
    response = api.get("/api/events/?start=2026-01-01T20:00:00Z&end=2026-01-02T00:00:00Z")
    assert response.status_code == 400
    (message,) = response.json()["end"]
    assert "narrow the window" in message and "1000" in message
    # 600 is within the bound.
    found = window(api, "2026-01-01T09:00:00Z", "2026-01-01T10:00:00Z")
    assert len(found) == 60 and found[0]["start"] == "2026-01-01T09:00:00Z"


def test_window_overlapping_too_many_series_is_400_unless_one_calendar_is_asked_for(
    api, user, calendar, settings
):
    settings.CALY_MAX_SERIES = 3
    other = make_calendar(make_account(user))
    for n in range(4):
        store(
            calendar if n < 2 else other,
            f"/cal/daily{n}.ics",
            ics(vevent(f"daily{n}", "DTSTART:20260101T090000Z", "RRULE:FREQ=DAILY")),
        )
    response = api.get("/api/events/?start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z")
    assert response.status_code == 400
    assert "narrow the window" in response.json()["end"][0]
    found = window(api, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", calendar=other.pk)
    assert [e["uid"] for e in found] == ["daily2", "daily3"]


def test_each_page_expands_only_what_it_shows(api, calendar):
    """Two days of a minutely series: 29 pages of every minute in order, none repeated or left
    out, and each page works out about one page of occurrences, not the whole window."""
    store(calendar, "/cal/minutely.ics", every_minute("minutely", first="20260301T000000Z"))
    expanded: list[int] = []
    original = Occurrence.as_component

    def counted(self, *args, **kwargs):
        expanded[-1] += 1
        return original(self, *args, **kwargs)

    starts: list[str] = []
    url = "/api/events/?start=2026-03-01T00:00:00Z&end=2026-03-03T00:00:00Z"
    with mock.patch.object(Occurrence, "as_component", counted):
        while url:
            expanded.append(0)
            response = api.get(url)
            assert response.status_code == 200, response.json()
            starts += [e["start"] for e in response.json()["results"]]
            url = response.json()["next"]
    first = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    expected = [
        (first + dt.timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ") for m in range(2880)
    ]
    assert starts == expected
    assert len(expanded) == 29 and max(expanded) <= 2 * django_settings.REST_FRAMEWORK["PAGE_SIZE"]


def test_next_page_carries_on_where_the_last_one_stopped_when_events_arrive_between(api, calendar):
    objects = []
    for n in range(150):
        raw = ics(vevent(f"e{n}", f"DTSTART:20260105T{n // 60:02}{n % 60:02}00Z", "DURATION:PT1M"))
        objects.append(
            RemoteObject(href=f"/cal/e{n}.ics", etag='"1"', events=parse_object(raw), raw=raw)
        )
    events_apply(calendar=calendar, batch=ChangeBatch(objects=objects))
    body = api.get("/api/events/?start=2026-01-05T00:00:00Z&end=2026-01-06T00:00:00Z").json()
    first_page = [e["uid"] for e in body["results"]]
    # A sync stores an event that sorts before everything already shown.
    store(calendar, "/cal/early.ics", ics(vevent("early", "DTSTART:20260105T000000Z")))
    rest = [e["uid"] for e in api.get(body["next"]).json()["results"]]
    assert first_page == [f"e{n}" for n in range(100)]
    assert rest == [f"e{n}" for n in range(100, 150)]


def test_reading_events_is_rate_limited_per_user(api, calendar, settings):
    from django.core.cache import cache

    cache.clear()
    rates = dict(django_settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], event_read="3/minute")
    settings.REST_FRAMEWORK = {**django_settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    store(
        calendar, "/cal/daily.ics", ics(vevent("d", "DTSTART:20260101T090000Z", "RRULE:FREQ=DAILY"))
    )
    windowed = "/api/events/?start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00Z"
    answers = [api.get(path).status_code for path in (windowed, "/api/events/", windowed, windowed)]
    assert answers == [200, 200, 200, 429]
    limited = api.get("/api/events/")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    other = APIClient()
    other.force_authenticate(make_user("bob"))
    assert other.get(windowed).status_code == 200
