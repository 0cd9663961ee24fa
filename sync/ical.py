"""iCalendar text → RemoteEvent: the one place that knows how VEVENT properties map to Caly's.

Time zones are resolved here, per object: an IANA name wins, then a Windows name
("W. Europe Standard Time" → Europe/Berlin, icalendar's own table), then a vendor-prefixed
globally unique TZID, then the object's own VTIMEZONE. icalendar keeps custom VTIMEZONEs in a
process-wide cache keyed by TZID alone, so two users' different "Custom" zones would collide;
Caly therefore re-reads the written wall time and applies the zone it resolved from this object.
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
from icalendar.timezone import tzp
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from sync.providers.base import RemoteEvent

UTC = dt.UTC
# Properties whose values carry a TZID the way DTSTART does.
ZONED = ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE")


class MalformedObject(ValueError):
    """The text is not an iCalendar object Caly can store."""


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
def _custom_zone(definition: bytes) -> dt.tzinfo | None:
    """A VTIMEZONE's zone, cached by its whole text so equal TZIDs with other rules never mix."""
    component = icalendar.Timezone.from_ical(definition)
    try:
        return component.to_tz(tzp, lookup_tzid=False)
    except Exception:  # an unusable VTIMEZONE: treat its times as floating
        return None


class Zones:
    """TZID → tzinfo for one calendar object, with its VTIMEZONEs as the last resort."""

    def __init__(self, calendar, default: dt.tzinfo):
        self.default = default
        self._definitions = {str(tz.get("TZID", "")): tz for tz in calendar.walk("VTIMEZONE")}

    def resolve(self, tzid: str) -> tuple[dt.tzinfo, str]:
        """The zone and the name to record for it ("" when Caly fell back to the default)."""
        zone = iana_zone(tzid)
        if zone is not None:
            return zone, zone.key
        definition = self._definitions.get(tzid)
        if definition is not None:
            custom = _custom_zone(definition.to_ical())
            if custom is not None:
                return custom, tzid
        return self.default, ""


def as_instant(value, *, default_zone: dt.tzinfo = UTC) -> dt.datetime:
    """A DATE or DATE-TIME as an aware UTC instant (dates at midnight, floating times in `default_zone`)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=default_zone)
        return value.astimezone(UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)


def recurrence_key(value) -> str:
    """RECURRENCE-ID / originalStartTime as a stable string: UTC basic format, or a bare date."""
    if isinstance(value, dt.datetime):
        return as_instant(value).strftime("%Y%m%dT%H%M%SZ")
    return value.strftime("%Y%m%d")


def _text(component, name: str) -> str:
    value = component.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return "" if value is None else str(value)


def _localize(value, params, zones: Zones) -> tuple[dt.date, str]:
    """A parsed DATE/DATE-TIME with the zone Caly resolved for its TZID, and that zone's name."""
    if not isinstance(value, dt.datetime):
        return value, ""
    tzid = params.get("TZID") if params else None
    if tzid:
        zone, name = zones.resolve(str(tzid))
        wall = value.replace(tzinfo=None)
        return tzp.localize(wall, zone), name
    if value.tzinfo is None:
        return value, ""  # floating: the caller decides which zone it is in
    return value, "UTC" if value.utcoffset() == dt.timedelta(0) else ""


def _property_values(component, name: str) -> list:
    values = component.get(name)
    if values is None:
        return []
    return values if isinstance(values, list) else [values]


def _date_list(component, name: str, zones: Zones) -> tuple[str, ...]:
    keys = []
    for prop in _property_values(component, name):
        for item in prop.dts:
            value = item.dt
            if isinstance(value, tuple):  # RDATE;VALUE=PERIOD: the period's start
                value = value[0]
            local, _ = _localize(value, prop.params, zones)
            keys.append(recurrence_key(as_instant(local, default_zone=zones.default)))
    return tuple(keys)


def event_from_component(component, *, zones: Zones) -> RemoteEvent:
    uid = _text(component, "UID").strip()
    if not uid:
        raise MalformedObject("VEVENT without UID")
    dtstart = component.get("DTSTART")
    if dtstart is None:
        raise MalformedObject(f"VEVENT {uid} without DTSTART")
    try:
        start_local, zone_name = _localize(dtstart.dt, dtstart.params, zones)
    except Exception as exc:
        raise MalformedObject(f"VEVENT {uid}: unreadable DTSTART ({exc})") from exc
    all_day = not isinstance(start_local, dt.datetime)
    default = zones.default
    start = as_instant(start_local, default_zone=default)
    if component.get("DTEND") is not None:
        dtend = component["DTEND"]
        end_local, _ = _localize(dtend.dt, dtend.params, zones)
        end = as_instant(end_local, default_zone=default)
    elif component.get("DURATION") is not None:
        duration = component["DURATION"].dt
        if all_day:
            end = start + duration
        else:
            # Nominal days follow the wall clock across DST changes (RFC 5545 §3.3.6).
            if start_local.tzinfo is None:
                start_local = start_local.replace(tzinfo=default)
            end = (start_local + duration).astimezone(UTC)
    else:
        end = start + (dt.timedelta(days=1) if all_day else dt.timedelta(0))
    rid = component.get("RECURRENCE-ID")
    recurrence_id = ""
    if rid is not None:
        rid_local, _ = _localize(rid.dt, rid.params, zones)
        recurrence_id = recurrence_key(as_instant(rid_local, default_zone=default))
    rrule = component.get("RRULE")
    if isinstance(rrule, list):
        rrule = rrule[0]
    last_modified = component.get("LAST-MODIFIED")
    return RemoteEvent(
        uid=uid,
        recurrence_id=recurrence_id,
        summary=_text(component, "SUMMARY"),
        description=_text(component, "DESCRIPTION"),
        location=_text(component, "LOCATION"),
        start=start,
        end=end,
        all_day=all_day,
        timezone="" if all_day else zone_name,
        status=_text(component, "STATUS").upper(),
        rrule=rrule.to_ical().decode() if rrule is not None else "",
        rdate=_date_list(component, "RDATE", zones),
        exdate=_date_list(component, "EXDATE", zones),
        last_modified=as_instant(last_modified.dt) if last_modified is not None else None,
    )


def default_zone_for(name: str) -> dt.tzinfo:
    """The zone floating times are read in: the calendar's own, else UTC."""
    return (iana_zone(name) if name else None) or UTC


def parse_object(raw: str, *, default_timezone: str = "") -> tuple[RemoteEvent, ...]:
    """Every VEVENT of one calendar object; raises MalformedObject if it cannot be read."""
    try:
        with warnings.catch_warnings():
            # Guessing `/vendor/…/Europe/Berlin` is exactly what Caly wants; no warning per event.
            warnings.simplefilter("ignore")
            calendar = icalendar.Calendar.from_ical(raw)
            zones = Zones(calendar, default_zone_for(default_timezone))
            return tuple(event_from_component(c, zones=zones) for c in calendar.walk("VEVENT"))
    except MalformedObject:
        raise
    except Exception as exc:  # icalendar raises ValueError, KeyError, TypeError… on bad input
        raise MalformedObject(f"unreadable iCalendar: {exc}") from exc
