"""Zone names and instants, shared by the iCalendar and Google mappings and event reads."""

from __future__ import annotations

import datetime as dt

import pytest

from calendars.timezones import as_instant, default_end, iana_zone, recurrence_key, zone_named

UTC = dt.UTC


@pytest.mark.parametrize(
    "name, key",
    [
        ("Europe/Berlin", "Europe/Berlin"),
        ("W. Europe Standard Time", "Europe/Berlin"),
        ("/mozilla.org/20050126_1/Europe/Berlin", "Europe/Berlin"),
        ('"Europe/Berlin"', "Europe/Berlin"),
        ("GMT", "UTC"),
    ],
)
def test_zone_names_caly_understands(name, key):
    assert iana_zone(name).key == key


@pytest.mark.parametrize("name", ["", "Office Time", "../etc/passwd"])
def test_unknown_names_mean_utc(name):
    assert zone_named(name) is UTC


def test_instants_and_recurrence_keys():
    berlin = zone_named("Europe/Berlin")
    floating = dt.datetime(2026, 7, 5, 9)
    assert as_instant(floating) == dt.datetime(2026, 7, 5, 9, tzinfo=UTC)
    assert as_instant(floating, default_zone=berlin) == dt.datetime(2026, 7, 5, 7, tzinfo=UTC)
    assert as_instant(dt.date(2026, 7, 5)) == dt.datetime(2026, 7, 5, tzinfo=UTC)
    assert recurrence_key(floating, default_zone=berlin) == "20260705T070000Z"
    assert recurrence_key(dt.date(2026, 7, 5)) == "20260705"


def test_an_event_without_an_end():
    start = dt.datetime(2026, 7, 5, tzinfo=UTC)
    assert default_end(start, all_day=True) == start + dt.timedelta(days=1)
    assert default_end(start, all_day=False) == start
