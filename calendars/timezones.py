"""Time-zone names and instants, the same for every provider and for reading stored events.

A zone name may be IANA ("Europe/Berlin"), Windows ("W. Europe Standard Time", icalendar's own
table) or vendor-prefixed ("/mozilla.org/20050126_1/Europe/Berlin"); a name that stands for no
known zone means UTC wherever a zone is needed. A name that only the object's own VTIMEZONE
defines ("Office") means what that object says (`Zones`), never what another object said.
Recurrence keys (RECURRENCE-ID, RDATE, EXDATE, Google's originalStartTime) are one string form,
so the same occurrence matches across providers.
"""

from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
from icalendar.timezone import tzp
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

UTC = dt.UTC


@functools.lru_cache(maxsize=1024)
def iana_zone(tzid: str) -> ZoneInfo | None:
    """The IANA zone a TZID names: IANA itself, a Windows name, or `/vendor/…/Area/City`."""
    cleaned = tzid.strip().strip('"').strip("/")
    candidates = [cleaned]
    if cleaned in WINDOWS_TO_OLSON:
        candidates.append(WINDOWS_TO_OLSON[cleaned])
    parts = cleaned.split("/")
    candidates += ["/".join(parts[i:]) for i in range(1, len(parts))]
    if cleaned.upper() in ("UTC", "GMT", "Z", "ETC/UTC"):
        candidates.insert(0, "UTC")
    for name in candidates:
        if not name or name.startswith(".") or ".." in name:
            continue
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
    return None


@functools.lru_cache(maxsize=256)
def custom_zone(definition: bytes) -> dt.tzinfo | None:
    """A VTIMEZONE's zone, cached by its whole text so equal TZIDs with other rules never mix."""
    component = icalendar.Timezone.from_ical(definition)
    try:
        return component.to_tz(tzp, lookup_tzid=False)
    except Exception:  # an unusable VTIMEZONE: treat its times as floating
        return None


class Zones:
    """TZID → tzinfo for one calendar object, with its VTIMEZONEs as the last resort.

    icalendar keeps custom VTIMEZONEs in a process-wide cache keyed by TZID alone, and reads
    every later "Office" with the first "Office" it met, which may be another user's. Caly reads
    a zoned time as the wall time written and the zone resolved here, from the object it is in.
    """

    def __init__(self, calendar=None, default: dt.tzinfo = UTC):
        self.default = default
        self._definitions = (
            {str(tz.get("TZID", "")): tz for tz in calendar.walk("VTIMEZONE")} if calendar else {}
        )

    def resolve(self, tzid: str) -> tuple[dt.tzinfo, str]:
        """The zone and the name to record for it ("" when Caly fell back to the default)."""
        zone = iana_zone(tzid)
        if zone is not None:
            return zone, zone.key
        definition = self._definitions.get(tzid)
        if definition is not None:
            custom = custom_zone(definition.to_ical())
            if custom is not None:
                return custom, tzid
        return self.default, ""

    def localize(self, value: dt.datetime, tzid: str) -> dt.datetime:
        """The wall time of `value`, written with `tzid`, in the zone this object means by it."""
        return tzp.localize(value.replace(tzinfo=None), self.resolve(tzid)[0])


def zone_named(name: str) -> dt.tzinfo:
    """The zone a calendar's or event's time-zone name stands for; UTC for none or unknown."""
    return (iana_zone(name) if name else None) or UTC


def as_instant(value, *, default_zone: dt.tzinfo = UTC) -> dt.datetime:
    """A date or date-time as an aware UTC instant (dates at midnight UTC, floating times in
    `default_zone`)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=default_zone)
        return value.astimezone(UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)


def recurrence_key(value, *, default_zone: dt.tzinfo = UTC) -> str:
    """An occurrence's original start as a stable string: UTC basic format, or a bare date."""
    if isinstance(value, dt.datetime):
        return as_instant(value, default_zone=default_zone).strftime("%Y%m%dT%H%M%SZ")
    return value.strftime("%Y%m%d")


def default_end(start: dt.datetime, *, all_day: bool) -> dt.datetime:
    """The end of an event that gives none: a whole day for an all-day event, else its start
    (RFC 5545 §3.6.1)."""
    return start + (dt.timedelta(days=1) if all_day else dt.timedelta(0))
