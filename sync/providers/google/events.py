"""Google's event JSON, decoded into typed structs and mapped to `RemoteEvent`s."""

from __future__ import annotations

import datetime as dt
import logging

import msgspec

from calendars.timezones import as_instant, default_end, recurrence_key, zone_named
from sync.ical import recurrence_from_lines
from sync.remote import RemoteEvent

logger = logging.getLogger(__name__)

UTC = dt.UTC


class _CalendarEntry(msgspec.Struct, rename="camel"):
    id: str = ""
    summary: str = ""
    summary_override: str = ""
    background_color: str = ""
    time_zone: str = ""
    primary: bool = False
    deleted: bool = False
    access_role: str = "owner"


class _CalendarPage(msgspec.Struct, rename="camel"):
    items: list[_CalendarEntry] = []
    next_page_token: str = ""


class _EventPage(msgspec.Struct, rename="camel"):
    items: list[msgspec.Raw] = []
    next_page_token: str = ""
    next_sync_token: str = ""


class _Time(msgspec.Struct, rename="camel"):
    """A start, end or originalStartTime: `date` for all-day events, else `dateTime`."""

    date: dt.date | None = None
    date_time: dt.datetime | None = None
    time_zone: str = ""


class GoogleEvent(msgspec.Struct, rename="camel"):
    """The fields of a Google event resource Caly reads; the rest stays in its stored JSON."""

    id: str = ""
    etag: str = ""
    status: str = ""
    ical_uid: str = msgspec.field(default="", name="iCalUID")
    recurring_event_id: str = ""
    summary: str = ""
    description: str = ""
    location: str = ""
    start: _Time | None = None
    end: _Time | None = None
    original_start_time: _Time | None = None
    recurrence: list[str] = []
    updated: str = ""
    extended_properties: dict | None = None


class _Identified(msgspec.Struct):
    id: str = ""


calendar_pages = msgspec.json.Decoder(_CalendarPage)
event_pages = msgspec.json.Decoder(_EventPage)
events_decoder = msgspec.json.Decoder(GoogleEvent)
_identified = msgspec.json.Decoder(_Identified)


def decode_event(text: bytes | str | msgspec.Raw) -> GoogleEvent:
    """One event resource as JSON text; raises ValueError (msgspec's) if it is not one."""
    return events_decoder.decode(text)


def id_of(raw: msgspec.Raw) -> str:
    """The id of an event that did not decode, if it has a readable one."""
    try:
        return _identified.decode(raw).id
    except msgspec.DecodeError:
        return ""


# --- the provider -----------------------------------------------------------------------------


def _moment(value: _Time, *, zone: dt.tzinfo) -> dt.date | dt.datetime:
    """A Google start/end/originalStartTime: a date (all-day) or an aware date-time."""
    if value.date is not None:
        return value.date
    moment = value.date_time
    if moment is None:
        raise ValueError("a time with neither date nor dateTime")
    if moment.tzinfo is None:  # RFC 3339 requires an offset; be lenient like Google's clients
        moment = moment.replace(tzinfo=zone_named(value.time_zone) if value.time_zone else zone)
    return moment


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return None


def event_from_google(item: GoogleEvent, *, uid: str, calendar_timezone: str = "") -> RemoteEvent:
    """One Google event resource in Caly's provider-neutral form.

    An exception's recurrence_id is its originalStartTime in the form CalDAV's RECURRENCE-ID
    takes (`calendars.timezones.recurrence_key`), so the same meeting matches across providers.
    A cancelled occurrence of a recurring event stays a row with status CANCELLED.
    """
    start_field = item.start or item.original_start_time
    if start_field is None:
        raise ValueError("an event with no start")
    zone_name = start_field.time_zone or calendar_timezone
    zone = zone_named(zone_name)
    recurrence_id = ""
    if item.recurring_event_id and item.original_start_time:
        recurrence_id = recurrence_key(_moment(item.original_start_time, zone=zone))
    start_value = _moment(start_field, zone=zone)
    all_day = type(start_value) is dt.date
    start = as_instant(start_value)
    if item.end is not None:
        end = as_instant(_moment(item.end, zone=zone))
    else:
        # A cancelled occurrence carries only its originalStartTime: it has no length.
        end = default_end(start, all_day=all_day and item.start is not None)
    rrule, rdate, exdate = "", (), ()
    if item.recurrence:
        rrule, rdate, exdate = recurrence_from_lines(item.recurrence, default_zone=zone)
    return RemoteEvent(
        uid=uid,
        recurrence_id=recurrence_id,
        summary=item.summary,
        description=item.description,
        location=item.location,
        start=start,
        end=end,
        all_day=all_day,
        timezone="" if all_day else zone_name,
        status=(item.status or "confirmed").upper(),
        rrule=rrule,
        rdate=rdate,
        exdate=exdate,
        last_modified=_parse_time(item.updated),
    )
