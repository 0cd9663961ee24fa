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
import re
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
    """Every VEVENT of one calendar object; raises MalformedObject if it cannot be read.

    Plain objects (IANA/Windows/UTC/floating times, no custom VTIMEZONE, no PERIOD values) are
    read by a small line reader several times faster than icalendar; anything it is not sure
    about goes through icalendar, which also decides what is malformed. Both give the same
    result (tests/sync/test_ical.py compares them).
    """
    default_zone = default_zone_for(default_timezone)
    try:
        return _parse_plain(raw, default_zone)
    except _NotPlain:
        return parse_object_with_icalendar(raw, default_zone=default_zone)


def parse_object_with_icalendar(
    raw: str, *, default_zone: dt.tzinfo = UTC
) -> tuple[RemoteEvent, ...]:
    """The reference reading of an object, through icalendar."""
    try:
        with warnings.catch_warnings():
            # Guessing `/vendor/…/Europe/Berlin` is exactly what Caly wants; no warning per event.
            warnings.simplefilter("ignore")
            calendar = icalendar.Calendar.from_ical(raw)
            zones = Zones(calendar, default_zone)
            return tuple(event_from_component(c, zones=zones) for c in calendar.walk("VEVENT"))
    except MalformedObject:
        raise
    except Exception as exc:  # icalendar raises ValueError, KeyError, TypeError… on bad input
        raise MalformedObject(f"unreadable iCalendar: {exc}") from exc


# --- the plain-object reader --------------------------------------------------------------
class _NotPlain(Exception):
    """Leave this object to icalendar."""


_WANTED = frozenset(
    {
        "UID",
        "DTSTART",
        "DTEND",
        "DURATION",
        "RECURRENCE-ID",
        "RRULE",
        "RDATE",
        "EXDATE",
        "SUMMARY",
        "DESCRIPTION",
        "LOCATION",
        "STATUS",
        "LAST-MODIFIED",
    }
)
_UNESCAPE = re.compile(r"\\([\\;,nN])")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def _split_line(line: str) -> tuple[str, dict[str, str], str]:
    head, sep, value = line.partition(":")
    if not sep or '"' in head:
        raise _NotPlain  # quoted parameters may hide ':' or ';'
    name, *params = head.split(";")
    parsed = {}
    for param in params:
        key, eq, param_value = param.partition("=")
        if not eq:
            raise _NotPlain
        parsed[key.upper()] = param_value
    return name.upper(), parsed, value


def _plain_time(value: str, params: dict[str, str], default: dt.tzinfo):
    """(local value, zone name) as `_localize` gives them, or _NotPlain."""
    kind = params.get("VALUE", "").upper()
    if kind == "DATE" or (not kind and len(value) == 8):
        if len(value) != 8 or not value.isdigit():
            raise _NotPlain
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:])), ""
    if kind not in ("", "DATE-TIME") or len(value) not in (15, 16) or value[8] != "T":
        raise _NotPlain
    digits = value[:8] + value[9:15]
    if not digits.isdigit() or (len(value) == 16 and value[15] != "Z"):
        raise _NotPlain
    wall = dt.datetime(
        int(digits[:4]),
        int(digits[4:6]),
        int(digits[6:8]),
        int(digits[8:10]),
        int(digits[10:12]),
        int(digits[12:14]),
    )
    tzid = params.get("TZID")
    if tzid:
        zone = iana_zone(tzid)
        if zone is None:
            raise _NotPlain  # a custom VTIMEZONE, or a name only icalendar may know
        return wall.replace(tzinfo=zone), zone.key
    if len(value) == 16:
        return wall.replace(tzinfo=UTC), "UTC"
    return wall, ""


def _plain_event(props: dict[str, list], default: dt.tzinfo) -> RemoteEvent:
    def first(name: str):
        values = props.get(name)
        return values[0] if values else None

    def text(name: str) -> str:
        found = first(name)
        return _unescape(found[1]) if found is not None else ""

    uid = text("UID").strip()
    dtstart = first("DTSTART")
    if not uid or dtstart is None:
        raise _NotPlain
    start_local, zone_name = _plain_time(dtstart[1], dtstart[0], default)
    all_day = not isinstance(start_local, dt.datetime)
    start = as_instant(start_local, default_zone=default)
    dtend, duration = first("DTEND"), first("DURATION")
    if dtend is not None:
        end = as_instant(_plain_time(dtend[1], dtend[0], default)[0], default_zone=default)
    elif duration is not None:
        delta = icalendar.vDuration.from_ical(duration[1])
        if all_day:
            end = start + delta
        else:
            local = start_local if start_local.tzinfo else start_local.replace(tzinfo=default)
            end = (local + delta).astimezone(UTC)
    else:
        end = start + (dt.timedelta(days=1) if all_day else dt.timedelta(0))
    rid = first("RECURRENCE-ID")
    recurrence_id = ""
    if rid is not None:
        if "RANGE" in rid[0]:
            raise _NotPlain
        rid_local = _plain_time(rid[1], rid[0], default)[0]
        recurrence_id = recurrence_key(as_instant(rid_local, default_zone=default))
    rrule = first("RRULE")
    last_modified = first("LAST-MODIFIED")

    def dates(name: str) -> tuple[str, ...]:
        keys = []
        for params, value in props.get(name, ()):
            for item in value.split(","):
                local = _plain_time(item.strip(), params, default)[0]
                keys.append(recurrence_key(as_instant(local, default_zone=default)))
        return tuple(keys)

    return RemoteEvent(
        uid=uid,
        recurrence_id=recurrence_id,
        summary=text("SUMMARY"),
        description=text("DESCRIPTION"),
        location=text("LOCATION"),
        start=start,
        end=end,
        all_day=all_day,
        timezone="" if all_day else zone_name,
        status=text("STATUS").upper(),
        rrule=icalendar.vRecur.from_ical(rrule[1]).to_ical().decode() if rrule else "",
        rdate=dates("RDATE"),
        exdate=dates("EXDATE"),
        last_modified=(
            as_instant(_plain_time(last_modified[1], last_modified[0], UTC)[0])
            if last_modified is not None
            else None
        ),
    )


def _parse_plain(raw: str, default: dt.tzinfo) -> tuple[RemoteEvent, ...]:
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.replace("\n ", "").replace("\n\t", "").split("\n")
    stack: list[str] = []
    events: list[dict[str, list]] = []
    current: dict[str, list] | None = None
    try:
        calendars = 0
        in_zone = False
        for line in lines:
            if not line:
                continue
            if in_zone:
                # A VTIMEZONE for a zone Caly knows by name is not needed (the name wins, as
                # in Zones.resolve); a custom one is icalendar's to build.
                upper = line.upper()
                if upper.startswith("TZID:") and iana_zone(line[5:]) is None:
                    raise _NotPlain
                if upper.startswith("TZID;"):
                    raise _NotPlain
                if upper.startswith("END:VTIMEZONE"):
                    in_zone = False
                continue
            first = line[0]
            if first in "Bb" and line[:6].upper() == "BEGIN:":
                component = line[6:].strip().upper()
                if component == "VTIMEZONE" and stack == ["VCALENDAR"]:
                    in_zone = True
                    continue
                if component == "VTIMEZONE" or (not stack and component != "VCALENDAR"):
                    raise _NotPlain
                if not stack:
                    calendars += 1
                    if calendars > 1:
                        raise _NotPlain
                stack.append(component)
                if component == "VEVENT" and stack == ["VCALENDAR", "VEVENT"]:
                    current = {}
                continue
            if first in "Ee" and line[:4].upper() == "END:":
                if not stack or stack.pop() != line[4:].strip().upper():
                    raise _NotPlain
                if current is not None and len(stack) == 1:
                    events.append(current)
                    current = None
                continue
            if not stack:
                raise _NotPlain  # text outside any component
            if current is None or len(stack) != 2:
                continue  # calendar properties, alarms: nothing Caly reads
            colon, semicolon = line.find(":"), line.find(";")
            cut = semicolon if 0 <= semicolon < colon else colon
            if line[:cut].upper() not in _WANTED:
                continue  # most lines of an object: DTSTAMP, ATTENDEE, X-…
            name, params, value = _split_line(line)
            current.setdefault(name, []).append((params, value))
        if stack or not lines or not text.lstrip().upper().startswith("BEGIN:VCALENDAR"):
            raise _NotPlain
        return tuple(_plain_event(props, default) for props in events)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
        raise _NotPlain from exc
