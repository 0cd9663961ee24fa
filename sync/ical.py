"""iCalendar text → RemoteEvent: the one place that knows how VEVENT properties map to Caly's."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import icalendar

from sync.providers.base import RemoteEvent

UTC = dt.UTC


class MalformedObject(ValueError):
    """The text is not an iCalendar object Caly can store."""


def _zone_name(value) -> str:
    tzinfo = getattr(value, "tzinfo", None)
    if tzinfo is None:
        return ""
    key = getattr(tzinfo, "key", None) or getattr(tzinfo, "zone", None)
    if key:
        return str(key)
    name = tzinfo.tzname(value) if isinstance(value, dt.datetime) else None
    return "UTC" if name == "UTC" else str(name or "")


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
    return "" if value is None else str(value)


def _dates(component, name: str) -> tuple[str, ...]:
    values = component.get(name)
    if values is None:
        return ()
    if not isinstance(values, list):
        values = [values]
    return tuple(recurrence_key(d.dt) for v in values for d in v.dts)


def event_from_component(component, *, default_zone: dt.tzinfo = UTC) -> RemoteEvent:
    uid = _text(component, "UID").strip()
    if not uid:
        raise MalformedObject("VEVENT without UID")
    dtstart = component.get("DTSTART")
    if dtstart is None:
        raise MalformedObject(f"VEVENT {uid} without DTSTART")
    start_value = dtstart.dt
    all_day = not isinstance(start_value, dt.datetime)
    start = as_instant(start_value, default_zone=default_zone)
    if component.get("DTEND") is not None:
        end = as_instant(component["DTEND"].dt, default_zone=default_zone)
    elif component.get("DURATION") is not None:
        end = start + component["DURATION"].dt
    else:
        end = start + (dt.timedelta(days=1) if all_day else dt.timedelta(0))
    rid = component.get("RECURRENCE-ID")
    rrule = component.get("RRULE")
    if isinstance(rrule, list):
        rrule = rrule[0]
    last_modified = component.get("LAST-MODIFIED")
    return RemoteEvent(
        uid=uid,
        recurrence_id=recurrence_key(rid.dt) if rid is not None else "",
        summary=_text(component, "SUMMARY"),
        description=_text(component, "DESCRIPTION"),
        location=_text(component, "LOCATION"),
        start=start,
        end=end,
        all_day=all_day,
        timezone="" if all_day else _zone_name(start_value),
        status=_text(component, "STATUS").upper(),
        rrule=rrule.to_ical().decode() if rrule is not None else "",
        rdate=_dates(component, "RDATE"),
        exdate=_dates(component, "EXDATE"),
        last_modified=as_instant(last_modified.dt) if last_modified is not None else None,
    )


def parse_object(raw: str, *, default_timezone: str = "") -> tuple[RemoteEvent, ...]:
    """Every VEVENT of one calendar object; raises MalformedObject if it cannot be read."""
    default_zone = UTC
    if default_timezone:
        try:
            default_zone = ZoneInfo(default_timezone)
        except (KeyError, ValueError):
            default_zone = UTC
    try:
        calendar = icalendar.Calendar.from_ical(raw)
        return tuple(
            event_from_component(c, default_zone=default_zone) for c in calendar.walk("VEVENT")
        )
    except MalformedObject:
        raise
    except Exception as exc:  # icalendar raises ValueError, KeyError, TypeError… on bad input
        raise MalformedObject(f"unreadable iCalendar: {exc}") from exc
