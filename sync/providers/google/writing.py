"""What Caly sends Google for a change made through it: the body of events.insert (with an event
id Caly chose, so that an insert sent twice is a 409, not a second event) or events.patch (only
the fields the user changed), which event (or instance of a series) it is about; and sending it
with If-Match (`send_write`, through the provider's `execute` and client `service`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import msgspec

from calendars.timezones import zone_named
from sync.providers.base import ProviderError, WriteConflict
from sync.providers.google.errors import Duplicate, NotFound, PreconditionFailed
from sync.providers.google.events import GoogleEvent, event_from_google, events_decoder
from sync.remote import EventValues, LocalChange, OutgoingWrite, RemoteObject

RAW = msgspec.json.Decoder(msgspec.Raw)  # an answer kept as Google sent it

# Written into every insert and patch, so that a write sent again after its worker died
# recognises itself on the server (`GoogleEvent.marker`).
MARKER = "calyWrite"
# The event fields a change of each of Caly's fields rewrites.
BY_FIELD = {
    "summary": ("summary",),
    "description": ("description",),
    "location": ("location",),
    "start": ("start", "end"),
    "end": ("start", "end"),
    "all_day": ("start", "end"),
    "timezone": ("start", "end"),
    "rrule": ("recurrence",),
}


def encode_write(change: LocalChange) -> OutgoingWrite:
    if change.kind == "create":
        # Google's ids are base32hex, 5 to 1024 characters: Caly's uid minus its dashes is one.
        event_id = change.uid.replace("-", "").lower()
        names = {"summary", "description", "location", "start", "end", "recurrence"}
        body = {
            "id": event_id,
            **_fields(names, change.values, patch=False),
            **_marker(change.marker),
        }
        return OutgoingWrite(
            kind="create",
            href=event_id,
            marker=change.marker,
            body=json.dumps(body),
            uid=f"{event_id}@google.com",
        )
    href = change.href
    if change.recurrence_id and not href.endswith("_" + change.recurrence_id):
        # One occurrence of a series: Google's instance id is `<series id>_<original start>`
        # (UTC basic format, or the date of an all-day one), Caly's recurrence key.
        href = f"{href}_{change.recurrence_id}"
    if change.kind == "delete":
        return OutgoingWrite(kind="delete", href=href, marker=change.marker)
    names = {name for field in change.changed for name in BY_FIELD.get(field, ())}
    body = {**_fields(names, change.values), **_marker(change.marker)}
    return OutgoingWrite(kind="update", href=href, marker=change.marker, body=json.dumps(body))


def _marker(marker: str) -> dict:
    return {"extendedProperties": {"private": {MARKER: marker}}}


def _time(when: dt.datetime, values: EventValues, *, patch: bool) -> dict:
    # Patch merges into the stored time: the other form is cleared explicitly.
    if values.all_day:
        moment = {"date": when.date().isoformat()}
        return {**moment, "dateTime": None, "timeZone": None} if patch else moment
    zone = values.timezone or "UTC"
    moment = {"dateTime": when.astimezone(zone_named(zone)).isoformat(), "timeZone": zone}
    return {**moment, "date": None} if patch else moment


def _fields(names: set[str], values: EventValues, *, patch: bool = True) -> dict:
    body = {}
    for name in ("summary", "description", "location"):
        if name in names:
            body[name] = getattr(values, name)
    if "start" in names and values.start is not None:
        body["start"] = _time(values.start, values, patch=patch)
        body["end"] = _time(values.end or values.start, values, patch=patch)
    if "recurrence" in names:
        body["recurrence"] = (
            [f"RRULE:{values.rrule.removeprefix('RRULE:')}"] if values.rrule else []
        )
    return body


def is_own(extended: dict | None, marker: str) -> bool:
    return ((extended or {}).get("private") or {}).get(MARKER) == marker


# --- sending ----------------------------------------------------------------------------------
def send_write(
    execute: Callable, service, write: OutgoingWrite, *, calendar_id: str, etag: str
) -> RemoteObject | None:
    """events.insert, events.patch or events.delete (If-Match: `etag`) of one event."""
    events = service.events()
    try:
        if write.kind == "create":
            request = events.insert(calendarId=calendar_id, body=json.loads(write.body))
        elif write.kind == "update":
            body = json.loads(write.body)
            request = events.patch(calendarId=calendar_id, eventId=write.href, body=body)
        else:
            request = events.delete(calendarId=calendar_id, eventId=write.href)
        if etag and write.kind != "create":
            request.headers["If-Match"] = etag
        decoder = None if write.kind == "delete" else RAW
        raw = execute(request, what="the event", decoder=decoder, action="change")
    except NotFound:
        if write.kind == "delete":
            return None  # gone already, by this write before its worker died or otherwise
        raise WriteConflict("The event was deleted on Google.", current=None) from None
    except (PreconditionFailed, Duplicate):
        current = _current(execute, service, calendar_id, write.href)
        if current is not None and is_own(current[1].extended_properties, write.marker):
            return current[0]  # this very write, sent before its worker died
        if write.kind == "create":  # someone else's event under the id Caly chose
            raise ProviderError(f"Google has another event with the id {write.href}.") from None
        raise WriteConflict(
            "The event was changed on Google since Caly last read it.",
            current=current[0] if current is not None else None,
        ) from None
    return None if raw is None else _object(raw)[0]


def _current(
    execute: Callable, service, calendar_id: str, event_id: str
) -> tuple[RemoteObject, GoogleEvent] | None:
    try:
        raw = execute(
            service.events().get(calendarId=calendar_id, eventId=event_id),
            what="the event",
            decoder=RAW,
        )
    except NotFound:
        return None
    found, item = _object(raw)
    return None if item.status == "cancelled" else (found, item)


def _object(raw: msgspec.Raw) -> tuple[RemoteObject, GoogleEvent]:
    """An event resource as Google sent it, with Caly's reading of it."""
    item = events_decoder.decode(raw)
    event = event_from_google(item, uid=item.ical_uid)
    found = RemoteObject(href=item.id, etag=item.etag, events=(event,), raw=str(raw, "utf-8"))
    return found, item
