"""Backoff and Retry-After: the waits Caly keeps between tries of a server."""

from __future__ import annotations

import datetime as dt

import pytest

from sync.backoff import backoff, retry_after_seconds

NOW = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


def test_backoff_grows_with_each_try_up_to_the_cap():
    for attempt in range(6):
        waits = [backoff(attempt=attempt, base=1.0, cap=10.0) for _ in range(200)]
        assert all(0 <= w <= min(10.0, 2**attempt) for w in waits)
    assert max(backoff(attempt=5, base=1.0) for _ in range(200)) > 10  # no cap: keeps growing


def test_retry_after_is_the_floor_with_a_little_spread():
    waits = [backoff(attempt=0, base=1.0, retry_after=30, spread=0.25) for _ in range(200)]
    assert all(30 <= w <= 30.25 for w in waits)
    assert backoff(attempt=0, base=0.0, retry_after=30) == 30


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("Mon, 05 Jan 2026 09:02:00 GMT", 120.0),
        ("Mon, 05 Jan 2026 09:02:00 -0000", 120.0),
        ("Mon, 05 Jan 2026 08:00:00 GMT", 0.0),  # already past: ask again now
        ("", None),
        (None, None),
        ("soon", None),
        ("inf", None),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(value, seconds):
    assert retry_after_seconds(value, now=NOW) == seconds
