"""What Caly PUTs for a change made through it: the stored iCalendar object with the changed
properties rewritten, everything else kept as the server sent it.

The object is edited as content lines (RFC 5545 §3.1): only the lines of the properties Caly
manages, in the VEVENT the change is about, are rewritten; every other line (VALARMs, X-
properties, other VEVENTs, their folding) stays byte for byte. icalendar renders the new values
and VTIMEZONEs, and reads which VEVENT is which (`sync.ical.parse_object`). Re-serialising the
whole object with icalendar would re-fold and re-escape lines Caly never touched.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from urllib.parse import quote, urljoin, urlsplit

import icalendar

from calendars.timezones import UTC, zone_named
from sync.engine import normalize_href
from sync.ical import MalformedObject, parse_object
from sync.providers.base import ProviderError, WriteConflict
from sync.providers.caldav.dav import NS, DAVSession
from sync.remote import EventValues, LocalChange, OutgoingWrite, RemoteObject

PRODID = "-//Caly//Caly calendar sync//EN"
MARKER = "X-CALY-WRITE"
# Properties Caly rewrites on a changed VEVENT, by the field that changes them.
BY_FIELD = {
    "summary": ("SUMMARY",),
    "description": ("DESCRIPTION",),
    "location": ("LOCATION",),
    "start": ("DTSTART", "DTEND", "DURATION"),
    "end": ("DTSTART", "DTEND", "DURATION"),
    "all_day": ("DTSTART", "DTEND", "DURATION"),
    "timezone": ("DTSTART", "DTEND", "DURATION"),
    "rrule": ("RRULE",),
}
# Rewritten on every change: when, which revision, and which write of Caly's it was.
HOUSEKEEPING = ("DTSTAMP", "LAST-MODIFIED", "SEQUENCE", MARKER)
# Not copied from the master into a new override of one occurrence.
SERIES_ONLY = {"RRULE", "RDATE", "EXDATE", "RECURRENCE-ID", "DTSTART", "DTEND", "DURATION"}
_NAME = re.compile(r"[^;:]*")


def encode_write(change: LocalChange) -> OutgoingWrite:
    """The PUT (or DELETE) for a change; raises ValueError if the stored object cannot take it."""
    if change.kind == "create":
        href = urlsplit(change.calendar_id).path.rstrip("/") + "/" + quote(change.uid) + ".ics"
        body = _new_object(change)
        return OutgoingWrite(
            kind="create", href=href, marker=change.marker, body=body, source=body, uid=change.uid
        )
    if change.kind == "delete" and not change.recurrence_id:
        return OutgoingWrite(kind="delete", href=change.href, marker=change.marker)
    lines = _content_lines(change.raw)
    blocks = _vevent_blocks(lines, change.raw)
    if change.kind == "delete":  # one occurrence: an EXDATE on the master, its override gone
        lines = _cancel_occurrence(lines, blocks, change)
    else:
        lines = _with_zone(_update(lines, blocks, change), change.values)
    body = "".join(line + "\r\n" for line in lines)
    return OutgoingWrite(
        kind="update", href=change.href, marker=change.marker, body=body, source=body
    )


# --- content lines ------------------------------------------------------------------------------
def _content_lines(raw: str) -> list[str]:
    """The object's content lines, each with its folded continuation lines as written."""
    lines: list[str] = []
    for physical in raw.replace("\r\n", "\n").split("\n"):
        if physical[:1] in (" ", "\t") and lines:
            lines[-1] += "\r\n" + physical
        elif physical.strip():
            lines.append(physical)
    return lines


def _name(line: str) -> str:
    return _NAME.match(line).group(0).upper()


def _vevent_blocks(lines: list[str], raw: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(uid, recurrence key) → (index of BEGIN:VEVENT, index of its END:VEVENT)."""
    spans, depth, begin = [], 0, 0
    for i, line in enumerate(lines):
        upper = line.upper()
        if upper.startswith("BEGIN:"):
            depth += 1
            if depth == 2 and upper == "BEGIN:VEVENT":
                begin = i
        elif upper.startswith("END:"):
            if depth == 2 and upper == "END:VEVENT":
                spans.append((begin, i))
            depth -= 1
    events = parse_object(raw)
    if len(events) != len(spans):
        raise ValueError("The stored object cannot be edited (its events cannot be told apart).")
    return {(e.uid, e.recurrence_id): span for e, span in zip(events, spans, strict=True)}


def _line(name: str, value: str, params: str = "") -> str:
    """A content line, folded at 75 octets (RFC 5545 §3.1) without splitting a character."""
    parts, current = [], b""
    for char in f"{name}{params}:{value}":
        encoded = char.encode()
        if len(current) + len(encoded) > (75 if not parts else 74):
            parts.append(current.decode())
            current = b""
        current += encoded
    return "\r\n ".join([*parts, current.decode()])


def _text_line(name: str, value: str) -> str:
    return _line(name, icalendar.vText(value).to_ical().decode())


def _moment_line(name: str, when: dt.datetime, values: EventValues) -> str:
    if values.all_day:
        return _line(name, when.strftime("%Y%m%d"), ";VALUE=DATE")
    if values.timezone and values.timezone != "UTC":
        local = when.astimezone(zone_named(values.timezone))
        return _line(name, local.strftime("%Y%m%dT%H%M%S"), f";TZID={values.timezone}")
    return _line(name, when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"))


def _key_line(name: str, key: str) -> str:
    """RECURRENCE-ID or EXDATE for a stored recurrence key (UTC basic format, or a date)."""
    if len(key) == 8:
        return _line(name, key, ";VALUE=DATE")
    return _line(name, key)


def _property_lines(names: set[str], values: EventValues, *, marker: str, sequence: int) -> list:
    now = dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = []
    for name, value in (
        ("SUMMARY", values.summary),
        ("DESCRIPTION", values.description),
        ("LOCATION", values.location),
    ):
        if name in names and value:
            lines.append(_text_line(name, value))
    if "DTSTART" in names and values.start is not None:
        lines.append(_moment_line("DTSTART", values.start, values))
        if values.end is not None:
            lines.append(_moment_line("DTEND", values.end, values))
    if "RRULE" in names and values.rrule:
        lines.append(_line("RRULE", values.rrule.removeprefix("RRULE:")))
    lines += [
        _line("DTSTAMP", now),
        _line("LAST-MODIFIED", now),
        _line("SEQUENCE", str(sequence)),
        _line(MARKER, marker),
    ]
    return lines


def _sequence(block: list[str]) -> int:
    for line in block:
        if _name(line) == "SEQUENCE":
            try:
                return int(line.partition(":")[2].strip()) + 1
            except ValueError:
                return 1
    return 0


def _rewrite(block: list[str], names: set[str], values: EventValues, marker: str) -> list[str]:
    """A VEVENT's lines with `names` (and the housekeeping) written anew, the rest kept: each new
    line where its old one was, new properties before the first nested component."""
    names = names | set(HOUSEKEEPING)
    fresh = _property_lines(names, values, marker=marker, sequence=_sequence(block))
    by_name: dict[str, list[str]] = {}
    for line in fresh:
        by_name.setdefault(_name(line), []).append(line)
    out, depth = [], 0
    for line in block[1:-1]:
        if depth == 0 and _name(line) in names:
            out += by_name.pop(_name(line), [])  # and a repeated one is dropped
        else:
            out.append(line)
        upper = line.upper()
        if upper.startswith("BEGIN:"):
            depth += 1
        elif upper.startswith("END:"):
            depth -= 1
    rest = [line for lines in by_name.values() for line in lines]
    first_nested = next(
        (i for i, line in enumerate(out) if line.upper().startswith("BEGIN:")), None
    )
    if first_nested is None:
        out += rest
    else:
        out[first_nested:first_nested] = rest
    return [block[0], *out, block[-1]]


def _changed_names(change: LocalChange) -> set[str]:
    return {name for field in change.changed for name in BY_FIELD.get(field, ())}


def _update(lines: list[str], blocks: dict, change: LocalChange) -> list[str]:
    span = blocks.get((change.uid, change.recurrence_id))
    if span is not None:
        begin, end = span
        block = _rewrite(
            lines[begin : end + 1], _changed_names(change), change.values, change.marker
        )
        return lines[:begin] + block + lines[end + 1 :]
    if not change.recurrence_id or (change.uid, "") not in blocks:
        raise ValueError("The event is not in its stored object.")
    # A new override of one occurrence: the master's properties, its own times.
    begin, end = blocks[(change.uid, "")]
    master = [
        line
        for line in lines[begin + 1 : end]
        if _name(line) not in SERIES_ONLY and _name(line) not in HOUSEKEEPING
    ]
    names = _changed_names(change) | {"DTSTART", "DTEND", "DURATION"}
    override = _rewrite(
        ["BEGIN:VEVENT", _key_line("RECURRENCE-ID", change.recurrence_id), *master, "END:VEVENT"],
        names,
        change.values,
        change.marker,
    )
    last = max(e for (uid, _), (_, e) in blocks.items() if uid == change.uid)
    return lines[: last + 1] + override + lines[last + 1 :]


def _cancel_occurrence(lines: list[str], blocks: dict, change: LocalChange) -> list[str]:
    if (change.uid, "") not in blocks:
        raise ValueError("The series is not in its stored object.")
    override = blocks.get((change.uid, change.recurrence_id))
    if override is not None:
        lines = lines[: override[0]] + lines[override[1] + 1 :]
        blocks = _vevent_blocks(lines, "".join(line + "\r\n" for line in lines))
    begin, end = blocks[(change.uid, "")]
    block = _rewrite(lines[begin : end + 1], set(), change.values, change.marker)
    block.insert(len(block) - 1, _key_line("EXDATE", change.recurrence_id))
    return lines[:begin] + block + lines[end + 1 :]


# --- a new object ---------------------------------------------------------------------------------
def _new_object(change: LocalChange) -> str:
    values = change.values
    names = {"SUMMARY", "DESCRIPTION", "LOCATION", "DTSTART", "RRULE"}
    event = [
        "BEGIN:VEVENT",
        _text_line("UID", change.uid),
        *_property_lines(names, values, marker=change.marker, sequence=0),
        "END:VEVENT",
    ]
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", _line("PRODID", PRODID), *event, "END:VCALENDAR"]
    return "".join(line + "\r\n" for line in _with_zone(lines, values))


def _with_zone(lines: list[str], values: EventValues) -> list[str]:
    """The object with a VTIMEZONE for the zone its new times are written in, if it has none."""
    if not values.timezone or values.timezone == "UTC" or values.all_day:
        return lines
    if f"TZID:{values.timezone}".upper() in (line.upper() for line in lines):
        return lines
    vtimezone = _vtimezone(values.timezone)
    first = next(i for i, line in enumerate(lines) if line.upper() == "BEGIN:VEVENT")
    return lines[:first] + list(vtimezone) + lines[first:]


# --- sending ----------------------------------------------------------------------------------
ETAG_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"""
CONFLICT = "The event was changed on the server since Caly last read it."
GONE = "The event was deleted on the server."


def send_write(
    dav: DAVSession, write: OutgoingWrite, *, calendar_id: str, etag: str
) -> RemoteObject | None:
    """PUT (If-None-Match: * to create, If-Match to update) or DELETE (If-Match) one object."""
    url = urljoin(calendar_id, write.href)
    if write.kind == "delete":
        headers = {"If-Match": etag} if etag else {}
        response = dav.send("DELETE", url, "", depth=None, headers=headers)
        _finish(response)
        if response.status_code in (200, 202, 204, 404, 410):  # gone, by us or before us
            return None
        if response.status_code == 412:
            raise _conflict(_current(dav, url))
        raise _refused(dav, write, response.status_code)
    headers = {"Content-Type": "text/calendar; charset=utf-8"}
    if write.kind == "create":
        headers["If-None-Match"] = "*"
    elif etag:
        headers["If-Match"] = etag
    response = dav.send("PUT", url, write.body, depth=None, headers=headers)
    _finish(response)
    status = response.status_code
    if status == 412:
        current = _current(dav, url)
        if current is not None and _is_own(current, write):
            return current  # this very write, sent before its worker died
        raise _conflict(current)
    if status not in (200, 201, 204):
        raise _refused(dav, write, status)
    # RFC 4791 §5.3.4: a server that changed what it stored sends no ETag; ask for it then.
    new_etag = response.headers.get("ETag") or _etag(dav, url)
    return RemoteObject(
        href=normalize_href(urlsplit(url).path),
        etag=new_etag,
        events=parse_object(write.body),
        raw=write.body,
    )


def _finish(response) -> None:
    """Read the (short) answer to the end, so its connection goes back to the pool."""
    try:
        response.content  # noqa: B018
    finally:
        response.close()


def _is_own(current: RemoteObject, write: OutgoingWrite) -> bool:
    return f"{MARKER}:{write.marker}" in current.raw.replace("\r\n ", "")


def _conflict(current: RemoteObject | None) -> WriteConflict:
    return WriteConflict(CONFLICT if current is not None else GONE, current=current)


def _current(dav: DAVSession, url: str) -> RemoteObject | None:
    """The object as the server has it now (one GET), or None if it is gone."""
    response = dav.send("GET", url, "", depth=None, headers={"Accept": "text/calendar"})
    try:
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise ProviderError(
                f"GET {urlsplit(url).path} answered HTTP {response.status_code}, expected 200."
            )
        raw = response.content.decode("utf-8", errors="replace")
    finally:
        response.close()
    try:
        events = parse_object(raw)
    except MalformedObject as exc:
        raise ProviderError(
            f"The server's copy of {urlsplit(url).path} is unreadable: {exc}"
        ) from None
    etag = response.headers.get("ETag") or _etag(dav, url)
    return RemoteObject(href=normalize_href(urlsplit(url).path), etag=etag, events=events, raw=raw)


def _etag(dav: DAVSession, url: str) -> str:
    answer = dav.multistatus("PROPFIND", url, ETAG_BODY, depth="0")
    for item in answer:
        if item.props is not None:
            return (item.props.findtext("d:getetag", namespaces=NS) or "").strip()
    return ""


def _refused(dav: DAVSession, write: OutgoingWrite, status: int) -> ProviderError:
    what = {"create": "create", "update": "change", "delete": "delete"}[write.kind]
    if status == 403:
        return ProviderError(
            f"The CalDAV server at {dav.host()} does not let this account {what} events in "
            "this calendar (HTTP 403)."
        )
    return ProviderError(
        f"The CalDAV server at {dav.host()} refused to {what} the event (HTTP {status})."
    )


@functools.lru_cache(maxsize=64)
def _vtimezone(tzid: str) -> tuple[str, ...]:
    """The VTIMEZONE of an IANA zone as content lines (icalendar takes ~9 ms to build one)."""
    return tuple(_content_lines(icalendar.Timezone.from_tzid(tzid).to_ical().decode()))
