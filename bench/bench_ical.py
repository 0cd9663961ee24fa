"""iCalendar reading: Caly's line reader against icalendar, on the CalDAV benchmark's calendar.

sync/ical.py reads plain objects with a line reader and leaves the rest to icalendar; both feed
one mapping. This measures whether the line reader pays, in one run, medians of REPEATS:
- parse only: the 5,000 objects of a first sync (bench_caldav's calendar as Radicale serves
  them), read by `parse_object` and by `parse_object_with_icalendar`;
- first sync: Caly's whole sync run of that calendar against Radicale on loopback, in-process,
  as is and with the line reader switched off (every object then takes icalendar's path).
Both readers must give the same events, and both syncs store the same rows; it fails otherwise.
"""

from __future__ import annotations

import sys
import uuid
from unittest import mock

from bench_caldav import EVENTS, PASSWORD, caly_account, caly_sync, seed
from common import ROOT, median, report, setup_django, timed

REPEATS = 3
STORED = (
    "uid",
    "recurrence_id",
    "start",
    "end",
    "all_day",
    "timezone",
    "summary",
    "description",
    "location",
    "rrule",
)


def icalendar_only():
    """`parse_object` as if no object were plain: it falls back to icalendar for every one."""
    from sync import ical

    return mock.patch.object(ical, "_plain_properties", side_effect=ical._NotPlain)


def first_sync(owner, server, *, line_reader: bool) -> tuple[float, set, list[str], str]:
    """One first sync of the calendar on a new account: time, rows stored, objects, zone."""
    from calendars.models import Account, Calendar, Event

    account = caly_account(owner, server.base_url, server.user, "five-thousand")
    if line_reader:
        elapsed, run = caly_sync(account)
    else:
        with icalendar_only():
            elapsed, run = caly_sync(account)
    events = Event.objects.filter(calendar__account=account)
    rows = set(events.values_list(*STORED))
    assert run.created == len(rows) >= EVENTS, (run.created, len(rows))
    raws = list(dict(events.values_list("href", "raw")).values())  # one text per object
    zone = Calendar.objects.get(account=account, selected=True).timezone
    Account.objects.filter(pk=account.pk).delete()
    return elapsed, rows, raws, zone


def main() -> None:
    setup_django()
    from django.contrib.auth import get_user_model

    from sync import ical
    from tests.support.caldav_servers import start_radicale

    server = start_radicale(user="bench")
    server.session.auth = ("bench", PASSWORD)
    owner = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:6]}")
    figures: dict = {"events": EVENTS, "repeats": REPEATS}
    try:
        seed(server, "five-thousand", EVENTS)
        times: dict[bool, list[float]] = {True: [], False: []}
        stored: dict[bool, set] = {}
        for n in range(REPEATS):
            # Alternate which reader goes first, so neither always meets the warmer server.
            for line_reader in (True, False) if n % 2 == 0 else (False, True):
                elapsed, rows, raws, zone = first_sync(owner, server, line_reader=line_reader)
                times[line_reader].append(elapsed)
                assert stored.setdefault(line_reader, rows) == rows, "a reader is not stable"
        assert len(stored[True]) == len(stored[False]), (len(stored[True]), len(stored[False]))
        assert stored[True] == stored[False], sorted(stored[True] ^ stored[False])[:4]

        # Parse only: the objects the sync fetched, as Radicale served them.
        default_zone = ical.default_zone_for(zone)
        plain = sum(1 for raw in raws if _is_plain(raw))
        fast_times, reference_times = [], []
        for _ in range(REPEATS):
            with timed(fast_times):
                fast = [ical.parse_object(raw, default_timezone=zone) for raw in raws]
            with timed(reference_times):
                reference = [
                    ical.parse_object_with_icalendar(raw, default_zone=default_zone) for raw in raws
                ]
            disagree = [(f, r) for f, r in zip(fast, reference, strict=True) if f != r]
            assert not disagree, disagree[:1]
        figures.update(
            {
                "objects": len(raws),
                "objects_the_line_reader_reads": plain,
                "parse_line_reader_s": median(fast_times),
                "parse_icalendar_s": median(reference_times),
                "parse_icalendar_over_line_reader": median(reference_times) / median(fast_times),
                "first_sync_line_reader_s": median(times[True]),
                "first_sync_icalendar_s": median(times[False]),
                "first_sync_icalendar_over_line_reader": median(times[False]) / median(times[True]),
                "first_sync_rows_stored": len(stored[True]),
                "first_sync_line_reader_runs_s": [round(t, 3) for t in times[True]],
                "first_sync_icalendar_runs_s": [round(t, 3) for t in times[False]],
            }
        )
    finally:
        server.stop()
    report("ical", figures)


def _is_plain(raw: str) -> bool:
    from sync import ical

    try:
        ical._plain_properties(raw)
    except ical._NOT_PLAIN:
        return False
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
