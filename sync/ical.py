"""iCalendar text → RemoteEvent: the one place that knows how VEVENT properties map to Caly's.

An object is read into its VEVENTs' properties (`Properties`: name → [(parameters, value)], the
values parsed), by a small line reader when the object is plain, else by icalendar; one mapping
(`event_from_properties`) turns them into RemoteEvents. The line reader makes a 5,000-event
first sync 1.6 to 2× faster than icalendar alone (4.1 s against 8.0 s, bench/RESULTS.md);
anything it is not sure about goes to icalendar, which also decides what is malformed.

Time zones are resolved per object (`calendars.timezones.Zones`, which reading occurrences in a
window shares): an IANA name wins, then a Windows name, then a vendor-prefixed globally unique
TZID, then the object's own VTIMEZONE. icalendar keeps custom VTIMEZONEs in a process-wide cache
keyed by TZID alone, so two users' different "Custom" zones would collide; Caly therefore
re-reads the written wall time and applies the zone it resolved from this object.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Mapping

import icalendar
from icalendar.timezone import tzp

from calendars.timezones import (
    UTC,
    Zones,
    as_instant,
    default_end,
    iana_zone,
    recurrence_key,
    zone_named,
)
from sync.remote import RemoteEvent

# Properties whose values carry a TZID the way DTSTART does.
ZONED = ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE")
# The VEVENT properties Caly reads, by the kind of value they hold.
MOMENTS = frozenset({"DTSTART", "DTEND", "RECURRENCE-ID", "LAST-MODIFIED"})
DATE_LISTS = frozenset({"RDATE", "EXDATE"})
TEXTS = frozenset({"UID", "SUMMARY", "DESCRIPTION", "LOCATION", "STATUS"})
WANTED = MOMENTS | DATE_LISTS | TEXTS | {"DURATION", "RRULE"}

# A VEVENT's properties as Caly reads them: name → [(parameters, value)], in the object's order.
# Values: a date or date-time for MOMENTS (naive as written when there is a TZID or none), a list
# of those (a PERIOD as its (start, end)) for DATE_LISTS, a timedelta for DURATION, the rule's
# text for RRULE, unescaped text for TEXTS.
Properties = dict[str, list[tuple[Mapping[str, str], object]]]


class MalformedObject(ValueError):
    """The text is not an iCalendar object Caly can store."""


# --- properties → RemoteEvent: the one mapping --------------------------------------------
class _Unreadable:
    """A property icalendar could not parse; reading it raises what icalendar raised."""

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


def _first(props: Properties, name: str):
    """(parameters, value) of the first `name`, or None."""
    values = props.get(name)
    if not values:
        return None
    params, value = values[0]
    if type(value) is _Unreadable:
        raise value.error
    return params, value


def _text(props: Properties, name: str) -> str:
    found = _first(props, name)
    return found[1] if found is not None else ""


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


def _instant(found, zones: Zones) -> dt.datetime:
    params, value = found
    return as_instant(_localize(value, params, zones)[0], default_zone=zones.default)


def _date_keys(props: Properties, name: str, zones: Zones) -> tuple[str, ...]:
    keys = []
    for params, values in props.get(name, ()):
        if type(values) is _Unreadable:
            raise values.error
        for value in values:
            if isinstance(value, tuple):  # RDATE;VALUE=PERIOD: the period's start
                value = value[0]
            keys.append(recurrence_key(_instant((params, value), zones)))
    return tuple(keys)


def recurrence_fields(
    props: Properties, zones: Zones
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """RRULE, RDATE and EXDATE as Caly stores them: the rule's text and recurrence keys."""
    rrule = _first(props, "RRULE")
    return (
        rrule[1] if rrule is not None else "",
        _date_keys(props, "RDATE", zones),
        _date_keys(props, "EXDATE", zones),
    )


def event_from_properties(props: Properties, *, zones: Zones) -> RemoteEvent:
    """One VEVENT in Caly's provider-neutral form."""
    uid = _text(props, "UID").strip()
    if not uid:
        raise MalformedObject("VEVENT without UID")
    if not props.get("DTSTART"):
        raise MalformedObject(f"VEVENT {uid} without DTSTART")
    try:
        params, value = _first(props, "DTSTART")
        start_local, zone_name = _localize(value, params, zones)
    except Exception as exc:
        raise MalformedObject(f"VEVENT {uid}: unreadable DTSTART ({exc})") from exc
    all_day = not isinstance(start_local, dt.datetime)
    default = zones.default
    start = as_instant(start_local, default_zone=default)
    dtend = _first(props, "DTEND")
    duration = _first(props, "DURATION") if dtend is None else None
    if dtend is not None:
        end = _instant(dtend, zones)
    elif duration is not None:
        if all_day:
            end = start + duration[1]
        else:
            # Nominal days follow the wall clock across DST changes (RFC 5545 §3.3.6).
            if start_local.tzinfo is None:
                start_local = start_local.replace(tzinfo=default)
            end = (start_local + duration[1]).astimezone(UTC)
    else:
        end = default_end(start, all_day=all_day)
    rid = _first(props, "RECURRENCE-ID")
    rrule, rdate, exdate = recurrence_fields(props, zones)
    last_modified = _first(props, "LAST-MODIFIED")
    return RemoteEvent(
        uid=uid,
        recurrence_id=recurrence_key(_instant(rid, zones)) if rid is not None else "",
        summary=_text(props, "SUMMARY"),
        description=_text(props, "DESCRIPTION"),
        location=_text(props, "LOCATION"),
        start=start,
        end=end,
        all_day=all_day,
        timezone="" if all_day else zone_name,
        status=_text(props, "STATUS").upper(),
        rrule=rrule,
        rdate=rdate,
        exdate=exdate,
        # A floating LAST-MODIFIED is UTC (RFC 5545 §3.8.7.3 says it must be UTC anyway).
        last_modified=(
            as_instant(_localize(last_modified[1], last_modified[0], zones)[0])
            if last_modified is not None
            else None
        ),
    )


# --- reading an object ----------------------------------------------------------------------
def default_zone_for(name: str) -> dt.tzinfo:
    """The zone floating times are read in: the calendar's own, else UTC."""
    return zone_named(name)


def parse_object(raw: str, *, default_timezone: str = "") -> tuple[RemoteEvent, ...]:
    """Every VEVENT of one calendar object; raises MalformedObject if it cannot be read.

    Plain objects (IANA/Windows/UTC/floating times, no custom VTIMEZONE, no PERIOD values) are
    read by the line reader; the rest, and whatever it is not sure about, by icalendar. Both
    give the same result (tests/sync/test_ical.py compares them).
    """
    default_zone = default_zone_for(default_timezone)
    try:
        zones = Zones(default=default_zone)
        return tuple(event_from_properties(p, zones=zones) for p in _plain_properties(raw))
    except _NOT_PLAIN:
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
            return tuple(
                event_from_properties(properties_of(c), zones=zones)
                for c in calendar.walk("VEVENT")
            )
    except MalformedObject:
        raise
    except Exception as exc:  # icalendar raises ValueError, KeyError, TypeError… on bad input
        raise MalformedObject(f"unreadable iCalendar: {exc}") from exc


def recurrence_from_lines(
    lines, *, default_zone: dt.tzinfo = UTC
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """RRULE/RDATE/EXDATE content lines (as Google lists them) as `recurrence_fields` reads
    them, floating times in `default_zone`; raises ValueError if they cannot be read."""
    body = "".join(f"{line}\r\n" for line in lines)
    vevent = f"BEGIN:VEVENT\r\n{body}END:VEVENT\r\n"
    zones = Zones(default=default_zone)
    try:
        (props,) = _plain_properties(f"BEGIN:VCALENDAR\r\n{vevent}END:VCALENDAR\r\n")
        return recurrence_fields(props, zones)
    except _NOT_PLAIN:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return recurrence_fields(properties_of(icalendar.Event.from_ical(vevent)), zones)


# --- icalendar's reading ------------------------------------------------------------------
def _read_value(name: str, prop):
    if name in TEXTS:
        return str(prop)
    try:
        if name in MOMENTS or name == "DURATION":
            return prop.dt
        if name in DATE_LISTS:
            return [item.dt for item in prop.dts]
        return prop.to_ical().decode()  # RRULE
    except Exception as exc:
        return _Unreadable(exc)


def properties_of(component) -> Properties:
    """A VEVENT icalendar parsed, as the mapping reads it."""
    props: Properties = {}
    for name in WANTED:
        values = component.get(name)
        if values is None:
            continue
        for prop in values if isinstance(values, list) else [values]:
            params = getattr(prop, "params", None) or {}
            props.setdefault(name, []).append((params, _read_value(name, prop)))
    return props


# --- the plain-object reader --------------------------------------------------------------
class _NotPlain(Exception):
    """Leave this object to icalendar."""


# What sends an object read by the line reader to icalendar instead, which decides whether it
# is malformed (MalformedObject is a ValueError).
_READ_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError)
_NOT_PLAIN = (_NotPlain, *_READ_ERRORS)


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
    tzid = parsed.get("TZID")
    if tzid is not None and iana_zone(tzid) is None:
        raise _NotPlain  # a custom VTIMEZONE, or a name only icalendar may know
    return name.upper(), parsed, value


def _plain_moment(value: str, params: dict[str, str]) -> dt.date | dt.datetime:
    """A DATE or DATE-TIME as written: a date, a naive wall time, or an aware UTC time."""
    kind = params.get("VALUE", "").upper()
    if kind == "DATE" or (not kind and len(value) == 8):
        if len(value) != 8 or not value.isdigit():
            raise _NotPlain
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    if kind not in ("", "DATE-TIME") or len(value) not in (15, 16) or value[8] != "T":
        raise _NotPlain
    digits = value[:8] + value[9:15]
    if not digits.isdigit() or (len(value) == 16 and value[15] != "Z"):
        raise _NotPlain
    return dt.datetime(
        int(digits[:4]),
        int(digits[4:6]),
        int(digits[6:8]),
        int(digits[8:10]),
        int(digits[10:12]),
        int(digits[12:14]),
        tzinfo=UTC if len(value) == 16 else None,
    )


def _plain_value(name: str, params: dict[str, str], value: str):
    if name in TEXTS:
        return _unescape(value)
    if name in MOMENTS:
        if name == "RECURRENCE-ID" and "RANGE" in params:
            raise _NotPlain
        return _plain_moment(value, params)
    if name in DATE_LISTS:
        return [_plain_moment(item.strip(), params) for item in value.split(",")]
    if name == "DURATION":
        return icalendar.vDuration.from_ical(value)
    return icalendar.vRecur.from_ical(value).to_ical().decode()  # RRULE


def _plain_properties(raw: str) -> list[Properties]:
    """The VEVENTs of a plain object, read line by line; _NotPlain for anything else."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.replace("\n ", "").replace("\n\t", "").split("\n")
    stack: list[str] = []
    events: list[Properties] = []
    current: Properties | None = None
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
            if line[:cut].upper() not in WANTED:
                continue  # most lines of an object: DTSTAMP, ATTENDEE, X-…
            name, params, value = _split_line(line)
            current.setdefault(name, []).append((params, _plain_value(name, params, value)))
        if stack or not lines or not text.lstrip().upper().startswith("BEGIN:VCALENDAR"):
            raise _NotPlain
        return events
    except _READ_ERRORS as exc:
        raise _NotPlain from exc
