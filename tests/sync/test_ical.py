"""iCalendar → RemoteEvent: time zones, recurrence fields, fidelity and malformed input."""

from __future__ import annotations

import datetime as dt

import pytest

from sync.ical import MalformedObject, parse_object

UTC = dt.UTC


def calendar(*components: str) -> str:
    body = "".join(components)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Caly tests//EN\r\n{body}END:VCALENDAR\r\n"


def vevent(*lines: str, uid: str = "e@example.com") -> str:
    props = "".join(f"{line}\r\n" for line in lines)
    return f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n{props}END:VEVENT\r\n"


CUSTOM_ZONE = (
    "BEGIN:VTIMEZONE\r\nTZID:Office Time\r\n"
    "BEGIN:STANDARD\r\nDTSTART:19700101T000000\r\nTZOFFSETFROM:+0530\r\n"
    "TZOFFSETTO:+0530\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
)


def one(raw: str, **kwargs):
    (event,) = parse_object(raw, **kwargs)
    return event


def test_utc_times_are_instants():
    event = one(calendar(vevent("DTSTART:20260105T090000Z", "DTEND:20260105T100000Z")))
    assert event.start == dt.datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert event.end == dt.datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert (event.timezone, event.all_day) == ("UTC", False)


@pytest.mark.parametrize(
    "tzid",
    ["Europe/Berlin", "W. Europe Standard Time", "/mozilla.org/20050126_1/Europe/Berlin"],
)
def test_iana_windows_and_vendor_zone_names(tzid):
    event = one(
        calendar(
            vevent(f"DTSTART;TZID={tzid}:20260705T090000", f"DTEND;TZID={tzid}:20260705T100000")
        )
    )
    # Berlin is UTC+2 in July.
    assert event.start == dt.datetime(2026, 7, 5, 7, tzinfo=UTC)
    assert event.end == dt.datetime(2026, 7, 5, 8, tzinfo=UTC)
    assert event.timezone == "Europe/Berlin"


def test_custom_vtimezone_is_read_from_the_object():
    event = one(calendar(CUSTOM_ZONE, vevent("DTSTART;TZID=Office Time:20260105T090000")))
    assert event.start == dt.datetime(2026, 1, 5, 3, 30, tzinfo=UTC)
    assert event.timezone == "Office Time"


def test_same_custom_tzid_with_other_rules_does_not_leak_between_objects():
    other = CUSTOM_ZONE.replace("+0530", "-0300")
    first = one(calendar(CUSTOM_ZONE, vevent("DTSTART;TZID=Office Time:20260105T090000")))
    second = one(calendar(other, vevent("DTSTART;TZID=Office Time:20260105T090000")))
    assert first.start == dt.datetime(2026, 1, 5, 3, 30, tzinfo=UTC)
    assert second.start == dt.datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def test_floating_time_is_read_in_the_calendars_zone():
    raw = calendar(vevent("DTSTART:20260105T090000", "DTEND:20260105T100000"))
    assert one(raw).start == dt.datetime(2026, 1, 5, 9, tzinfo=UTC)
    in_tokyo = one(raw, default_timezone="Asia/Tokyo")
    assert in_tokyo.start == dt.datetime(2026, 1, 5, 0, tzinfo=UTC)
    assert in_tokyo.timezone == ""


def test_all_day_dates():
    event = one(calendar(vevent("DTSTART;VALUE=DATE:20260105", "DTEND;VALUE=DATE:20260107")))
    assert event.all_day
    assert event.start == dt.datetime(2026, 1, 5, tzinfo=UTC)
    assert event.end == dt.datetime(2026, 1, 7, tzinfo=UTC)
    no_end = one(calendar(vevent("DTSTART;VALUE=DATE:20260105")))
    assert no_end.end == dt.datetime(2026, 1, 6, tzinfo=UTC)


def test_duration_follows_the_wall_clock_across_dst():
    # Berlin leaves DST on 2026-10-25: one nominal day later is 09:00 local again, 25 h later.
    event = one(calendar(vevent("DTSTART;TZID=Europe/Berlin:20261024T090000", "DURATION:P1D")))
    assert event.end - event.start == dt.timedelta(hours=25)


def test_recurrence_fields_of_master_and_override():
    raw = calendar(
        vevent(
            "DTSTART;TZID=Europe/Berlin:20260105T090000",
            "RRULE:FREQ=WEEKLY;COUNT=10",
            "EXDATE;TZID=Europe/Berlin:20260112T090000",
            "RDATE;TZID=Europe/Berlin:20260108T090000",
            uid="series@example.com",
        ),
        vevent(
            "RECURRENCE-ID;TZID=Europe/Berlin:20260119T090000",
            "DTSTART;TZID=Europe/Berlin:20260119T140000",
            "SUMMARY:Moved",
            uid="series@example.com",
        ),
        vevent(
            "RECURRENCE-ID;TZID=Europe/Berlin:20260126T090000",
            "DTSTART;TZID=Europe/Berlin:20260126T090000",
            "STATUS:CANCELLED",
            uid="series@example.com",
        ),
    )
    master, moved, cancelled = parse_object(raw)
    assert master.rrule == "FREQ=WEEKLY;COUNT=10"
    assert master.exdate == ("20260112T080000Z",)
    assert master.rdate == ("20260108T080000Z",)
    assert master.recurrence_id == ""
    assert (moved.recurrence_id, moved.summary) == ("20260119T080000Z", "Moved")
    assert moved.start == dt.datetime(2026, 1, 19, 13, tzinfo=UTC)
    assert (cancelled.recurrence_id, cancelled.status) == ("20260126T080000Z", "CANCELLED")


def test_non_ascii_and_long_text_survive():
    description = "Überprüfung — 会議 ✓ " * 5000
    event = one(
        calendar(
            vevent("DTSTART:20260105T090000Z", "SUMMARY:Café ☕", f"DESCRIPTION:{description}")
        )
    )
    assert event.summary == "Café ☕"
    assert event.description == description


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("this is not iCalendar", "unreadable"),
        (calendar(vevent("SUMMARY:no start")), "without DTSTART"),
        (calendar(vevent("DTSTART:2026XX05T090000Z")), "DTSTART"),
        (calendar("BEGIN:VEVENT\r\nDTSTART:20260105T090000Z\r\nEND:VEVENT\r\n"), "without UID"),
    ],
)
def test_malformed_objects_raise_with_a_reason(raw, reason):
    with pytest.raises(MalformedObject, match=reason):
        parse_object(raw)


def test_objects_without_events_give_nothing():
    todo = "BEGIN:VTODO\r\nUID:t@example.com\r\nDTSTAMP:20260101T000000Z\r\nEND:VTODO\r\n"
    assert parse_object(calendar(todo)) == ()


# --- the fast reader and icalendar agree --------------------------------------------------
CORPUS = [
    calendar(vevent("DTSTART:20260105T090000Z", "DTEND:20260105T100000Z", "SUMMARY:a\\, b\\nc")),
    calendar(vevent("DTSTART;TZID=Europe/Berlin:20260705T090000", "DURATION:PT1H30M")),
    calendar(vevent('DTSTART;TZID="W. Europe Standard Time":20260705T090000')),
    calendar(vevent("DTSTART;TZID=W. Europe Standard Time:20260705T090000", "DURATION:P1D")),
    calendar(vevent("DTSTART;VALUE=DATE:20260105", "RRULE:COUNT=3;FREQ=DAILY")),
    calendar(vevent("DTSTART:20260105T090000", "EXDATE:20260106T090000,20260107T090000")),
    calendar(
        vevent(
            "DTSTART;TZID=America/New_York:20260105T090000",
            "RRULE:FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20260301T000000Z",
            "EXDATE;TZID=America/New_York:20260107T090000",
            "RDATE;VALUE=DATE-TIME:20260110T120000Z",
            "LAST-MODIFIED:20260102T030405Z",
            "STATUS:confirmed",
            "LOCATION:Room \\; 1",
            "BEGIN:VALARM",
            "TRIGGER:-PT15M",
            "DESCRIPTION:not the event's",
            "END:VALARM",
            "DESCRIPTION:the event's",
        )
    ),
    calendar(CUSTOM_ZONE, vevent("DTSTART;TZID=Office Time:20260105T090000")),
    # A VTIMEZONE for an IANA name, as servers attach to each object (the name wins).
    calendar(
        CUSTOM_ZONE.replace("Office Time", "Europe/Berlin"),
        vevent("DTSTART;TZID=Europe/Berlin:20260705T090000"),
    ),
    calendar(vevent("DTSTART;VALUE=DATE:20260105"), vevent("DTSTART:20260106T000000Z", uid="2")),
    calendar(vevent("RECURRENCE-ID:20260106T090000Z", "DTSTART:20260106T150000Z")),
    calendar(vevent("DTSTART;VALUE=PERIOD:20260105T090000Z/PT1H")),
    calendar(
        "BEGIN:VEVENT\r\nUID:folded@exam\r\n ple.com\r\nDTSTART:20260105T090000Z\r\n"
        "SUMMARY:long line folded \r\n\tacross lines\r\nEND:VEVENT\r\n"
    ),
    calendar(vevent("DTSTART:20260105T090000Z", "SUMMARY;LANGUAGE=de:Grüße")),
    calendar(vevent("DTSTART:20261399T090000Z")),
    calendar(vevent("SUMMARY:no start")),
    "this is not iCalendar",
]


@pytest.mark.parametrize("raw", CORPUS)
@pytest.mark.parametrize("zone", ["", "Asia/Tokyo"])
def test_fast_reader_agrees_with_icalendar(raw, zone):
    from sync.ical import default_zone_for, parse_object_with_icalendar

    try:
        expected = parse_object_with_icalendar(raw, default_zone=default_zone_for(zone))
    except MalformedObject:
        with pytest.raises(MalformedObject):
            parse_object(raw, default_timezone=zone)
        return
    assert parse_object(raw, default_timezone=zone) == expected


def test_fast_reader_takes_plain_objects():
    from sync.ical import Zones, _plain_properties, event_from_properties

    # Quoted parameters and custom VTIMEZONEs are left to icalendar; the rest is read directly,
    # into the properties the one mapping reads.
    plain = [r for r in CORPUS[:7] if '"' not in r] + [CORPUS[8]]
    for raw in plain:
        properties = _plain_properties(raw)
        assert properties
        events = tuple(event_from_properties(p, zones=Zones(default=UTC)) for p in properties)
        assert events == parse_object(raw)


@pytest.mark.parametrize(
    "tzid", ["Europe/Berlin", '"Europe/Berlin"']
)  # read directly; by icalendar
def test_recurrence_lines_as_google_lists_them(tzid):
    from calendars.timezones import zone_named
    from sync.ical import recurrence_from_lines

    lines = [
        "RRULE:FREQ=WEEKLY;COUNT=6",
        f"EXDATE;TZID={tzid}:20260309T090000",
        "RDATE:20260320T090000",  # floating: the event's own zone
    ]
    rrule, rdate, exdate = recurrence_from_lines(lines, default_zone=zone_named("Asia/Tokyo"))
    assert (rrule, rdate, exdate) == (
        "FREQ=WEEKLY;COUNT=6",
        ("20260320T000000Z",),
        ("20260309T080000Z",),
    )
