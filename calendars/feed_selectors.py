"""Reads for the private iCalendar feeds (`calendars/feeds.py` serves them): which feed a secret
opens, its version (for ETag and Last-Modified), and its text, streamed."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import icalendar
from django.db.models import Count, Max

from calendars.models import Calendar, Event, EventChange, UserFeed
from calendars.selectors import vevent_from_row
from calendars.timezones import iana_zone

logger = logging.getLogger(__name__)
FEED_PRODID = "-//Caly//Feeds//EN"
# Part of every ETag: a change to what feeds hold makes clients fetch them again.
FEED_FORMAT = 1
_END = b"END:VCALENDAR\r\n"


@dataclass(frozen=True)
class Feed:
    """What a feed's URL stands for: one calendar, or every selected calendar of a user."""

    name: str
    owner_id: int
    calendars: tuple[Calendar, ...]
    created_at: dt.datetime
    timezone: str = ""


@dataclass(frozen=True)
class FeedVersion:
    etag: str
    last_modified: dt.datetime


def feed_for_secret(*, secret: str) -> Feed | None:
    """The feed a secret opens, or None (unknown, rotated away, or its owner deactivated)."""
    calendar = (
        Calendar.objects.filter(feed_secret=secret, account__owner__is_active=True)
        .select_related("account")
        .first()
    )
    if calendar is not None:
        return Feed(
            name=calendar.name or calendar.remote_id,
            owner_id=calendar.account.owner_id,
            calendars=(calendar,),
            created_at=calendar.created_at,
            timezone=calendar.timezone,
        )
    merged = UserFeed.objects.filter(secret=secret, owner__is_active=True).first()
    if merged is None:
        return None
    selected = Calendar.objects.filter(account__owner_id=merged.owner_id, selected=True)
    return Feed(
        name="Caly",
        owner_id=merged.owner_id,
        calendars=tuple(selected.order_by("id")),
        created_at=merged.created_at,
    )


def feed_version(*, feed: Feed) -> FeedVersion:
    """The feed's ETag and Last-Modified, from counts and maxima rather than the feed.

    Every insert, update and deletion of an event is in the change log (the database writes it,
    `EventChange`), including updates that leave `updated_at` alone, so its latest entry moves
    whenever what the feed holds does.
    """
    ids = [c.pk for c in feed.calendars]
    rows = Event.objects.filter(calendar_id__in=ids, deleting=False).aggregate(
        count=Count("id"), updated=Max("updated_at")
    )
    # With the count: a change whose transaction began first and committed last (a lower id
    # than the latest seen) still moves the ETag.
    log = EventChange.objects.filter(owner_id=feed.owner_id, calendar_id__in=ids).aggregate(
        count=Count("id"), last=Max("id"), at=Max("created_at")
    )
    state = [
        FEED_FORMAT,
        feed.name,
        [(c.pk, c.name, c.timezone) for c in feed.calendars],
        rows["count"],
        rows["updated"].isoformat() if rows["updated"] else None,
        log["count"],
        log["last"],
    ]
    digest = hashlib.sha256(json.dumps(state).encode()).hexdigest()[:32]
    moments = [m for m in (rows["updated"], log["at"], feed.created_at) if m is not None]
    return FeedVersion(etag=digest, last_modified=max(moments))


def feed_ical(*, feed: Feed) -> Iterator[bytes]:
    """The feed as one VCALENDAR, a piece at a time, rows read in chunks (`iterator()`).

    CalDAV events are the objects as the server sent them (`Event.raw`): each object once,
    however many rows (a master and its overrides) share it, with the VTIMEZONEs it brought.
    Google events keep Google's JSON there, so theirs are built from the row. A VTIMEZONE is
    sent once per TZID, before the first event that needs it; a TZID no object defines gets
    the IANA zone's. Events being deleted through Caly are left out.
    """
    head = icalendar.Calendar()
    head.add("PRODID", FEED_PRODID)
    head.add("VERSION", "2.0")
    head.add("CALSCALE", "GREGORIAN")
    head.add("X-WR-CALNAME", feed.name)
    if feed.timezone:
        head.add("X-WR-TIMEZONE", feed.timezone)
    yield head.to_ical().removesuffix(_END)
    sent_zones: set[str] = set()
    previous = None
    rows = (
        Event.objects.filter(calendar_id__in=[c.pk for c in feed.calendars], deleting=False)
        .order_by("calendar_id", "href", "uid", "recurrence_id", "id")
        .iterator(chunk_size=200)
    )
    for row in rows:
        if _is_ical(row.raw):
            # Rows of one object come one after another: send it with the first.
            source = (row.calendar_id, row.href or f"uid:{row.uid}")
            if source == previous:
                continue
            previous = source
            pieces = _object_pieces(row, sent_zones)
        else:
            pieces = _row_pieces(row, sent_zones)
        yield b"".join(pieces)
    yield _END


def _is_ical(raw: str) -> bool:
    return raw.lstrip().startswith("BEGIN:")


def _object_pieces(row: Event, sent_zones: set[str]) -> list[bytes]:
    """The VEVENTs of a stored object as the server sent them, each after the VTIMEZONEs it
    needs that the feed has not sent yet."""
    try:
        source = icalendar.Calendar.from_ical(row.raw)
        defined = {str(c.get("TZID", "")): c for c in source.subcomponents if c.name == "VTIMEZONE"}
        pieces = []
        for component in source.subcomponents:
            if component.name == "VEVENT":
                pieces += _zones_needed(component, sent_zones, defined)
                pieces.append(component.to_ical())
        return pieces
    except Exception:  # an object Caly stored but cannot read back: the rest of the feed goes on
        logger.warning("feed: cannot read event %s of calendar %s", row.pk, row.calendar_id)
        return []


def _row_pieces(row: Event, sent_zones: set[str]) -> list[bytes]:
    """A VEVENT built from a row whose source is not iCalendar (Google's JSON)."""
    if row.start is None:
        return []
    try:
        vevent = vevent_from_row(row)
        vevent.add("DTSTAMP", row.updated_at)
        if row.remote_last_modified is not None:
            vevent.add("LAST-MODIFIED", row.remote_last_modified)
        return [*_zones_needed(vevent, sent_zones, {}), vevent.to_ical()]
    except Exception:
        logger.warning("feed: cannot write event %s of calendar %s", row.pk, row.calendar_id)
        return []


def _zones_needed(
    component: icalendar.Event, sent_zones: set[str], defined: dict[str, icalendar.Timezone]
) -> list[bytes]:
    pieces = []
    for value in component.values():
        for prop in value if isinstance(value, list) else [value]:
            tzid = str(getattr(prop, "params", {}).get("TZID", ""))
            if not tzid or tzid in sent_zones:
                continue
            definition = defined[tzid].to_ical() if tzid in defined else _iana_vtimezone(tzid)
            if definition:
                sent_zones.add(tzid)
                pieces.append(definition)
    return pieces


@functools.lru_cache(maxsize=128)
def _iana_vtimezone(tzid: str) -> bytes | None:
    """The VTIMEZONE of the IANA zone a TZID names, under that TZID (icalendar takes ~9 ms to
    build one, hence the cache)."""
    zone = iana_zone(tzid)
    if zone is None:
        return None
    vtimezone = icalendar.Timezone.from_tzid(zone.key)
    if tzid != zone.key:
        vtimezone.pop("TZID")
        vtimezone.add("TZID", tzid)
    return vtimezone.to_ical()
