"""Reads of the synced data, always scoped to one user."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import heapq
import itertools
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import icalendar
import recurring_ical_events
from dateutil.rrule import rrulestr
from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from calendars.models import Account, Calendar, Event, EventChange, UserFeed
from calendars.timezones import (
    UTC,
    Zones,
    as_instant,
    default_end,
    iana_zone,
    recurrence_key,
    zone_named,
)

logger = logging.getLogger(__name__)


def accounts_for_user(*, user) -> QuerySet[Account]:
    # Credentials are decrypted only where a sync needs them: one account whose key was rotated
    # out must not break listing the others.
    return Account.objects.filter(owner=user).defer("credentials")


def calendars_for_user(*, user, account_id: int | None = None) -> QuerySet[Calendar]:
    qs = Calendar.objects.filter(account__owner=user).select_related("account")
    if account_id is not None:
        qs = qs.filter(account_id=account_id)
    return qs


def calendars_missing_for_user(*, user) -> QuerySet[Calendar]:
    """Calendars the server's last list left out: the next sync deletes them unless listed."""
    return Calendar.objects.filter(account__owner=user, missing_since__isnull=False).order_by(
        "name", "id"
    )


def events_for_user(
    *, user, calendar_id: int | None = None, with_deleting: bool = False
) -> QuerySet[Event]:
    """Stored rows (masters, overrides, single events); see `events_in_window` for a time window.

    Events deleted through Caly and not yet on the server are left out, unless `with_deleting`.
    """
    qs = Event.objects.filter(calendar__account__owner=user)
    if not with_deleting:
        qs = qs.filter(deleting=False)
    if calendar_id is not None:
        qs = qs.filter(calendar_id=calendar_id)
    return qs.defer("raw").order_by("start", "id")


# --- occurrences in a time window ---------------------------------------------------------
MAX_WINDOW = dt.timedelta(days=366 * 2)

# An occurrence's place in a window's listing: soonest first, then by the row it comes from.
OccurrenceKey = tuple[dt.datetime, int, str]


def occurrence_key(event: Event) -> OccurrenceKey:
    return (event.start, event.pk, event.recurrence_id)


class TooMuchToExpand(Exception):
    """Working out a window's recurring events would cost more than one request may."""


def events_in_window(
    *,
    user,
    start: dt.datetime,
    end: dt.datetime,
    limit: int,
    after: OccurrenceKey | None = None,
    calendar_id: int | None = None,
) -> list[Event]:
    """The first `limit` occurrences overlapping [start, end) that come after `after` (a key
    `occurrence_key` gave), recurring series expanded, soonest first.

    Series are expanded from their stored source with recurring-ical-events, so RRULE, RDATE,
    EXDATE and overridden instances (RECURRENCE-ID) count as the server wrote them. Cancelled
    occurrences (STATUS:CANCELLED) are left out. Each item is an unsaved `Event` carrying the
    occurrence's own start/end and texts, and the id of the row it comes from.

    Only what this page needs is expanded: each series is read lazily and merged. What a request
    may cost is bounded (TooMuchToExpand): at most CALY_MAX_SERIES recurring series, and at most
    CALY_MAX_OCCURRENCES occurrences of their rules from each series' first one to `end`, which
    is what dateutil steps through to reach the window, however few fall inside it.
    """
    calendars = Calendar.objects.filter(account__owner=user)
    if calendar_id is not None:
        calendars = calendars.filter(pk=calendar_id)
    zones = dict(calendars.values_list("id", "timezone"))
    in_scope = Event.objects.filter(calendar_id__in=list(zones), deleting=False)
    recurring = ~Q(rrule="") | ~Q(rdate=[])
    max_series = settings.CALY_MAX_SERIES
    masters = list(
        in_scope.filter(recurring, recurrence_id="")
        .filter(Q(start__lt=end) | Q(start__isnull=True))
        .order_by("id")
        .only(
            "id",
            "calendar_id",
            "uid",
            "recurrence_id",
            "href",
            "raw",
            "timezone",
            "rrule",
            "rdate",
            "exdate",
            "start",
            "end",
            "all_day",
            "status",
            "summary",
            "description",
            "location",
            "sync_state",
            "sync_error",
        )[: max_series + 1]
    )
    if len(masters) > max_series:
        raise TooMuchToExpand(
            f"More than {max_series} recurring events overlap this window; narrow the window "
            "or ask for one calendar."
        )

    singles = (
        in_scope.exclude(recurring)
        .filter(start__lt=end)
        .filter(Q(end__gt=start) | Q(start__gte=start))
        .exclude(status="CANCELLED")
    )
    uids_by_calendar: dict[int, set[str]] = {}
    for master in masters:
        uids_by_calendar.setdefault(master.calendar_id, set()).add(master.uid)
    for calendar, uids in uids_by_calendar.items():
        # An overridden instance: its series yields it.
        singles = singles.exclude(~Q(recurrence_id=""), calendar_id=calendar, uid__in=uids)
    if after is not None:
        singles = singles.filter(Q(start__gt=after[0]) | Q(start=after[0], pk__gt=after[1]))
    streams: list[Iterator[Event]] = [iter(singles.defer("raw").order_by("start", "id")[:limit])]

    overrides: dict[tuple[int, str], list[Event]] = {}
    if masters:
        for row in in_scope.filter(uid__in={m.uid for m in masters}).exclude(recurrence_id=""):
            overrides.setdefault((row.calendar_id, row.uid), []).append(row)
    budget = settings.CALY_MAX_OCCURRENCES
    for master in masters:
        rows = overrides.get((master.calendar_id, master.uid), [])
        zone = zone_named(zones[master.calendar_id])
        window = {"start": start, "end": end, "after": after}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                series = _series_calendar(master, rows, zone=zone)
                steps = _rule_steps(series, until=end, zone=zone, limit=budget)
                budget -= steps
        except Exception:  # a source Caly cannot expand: show the stored row
            logger.warning("cannot expand series %s of calendar %s", master.pk, master.calendar_id)
            streams.append(iter(_as_stored(master, **window)))
            continue
        if budget < 0:
            raise TooMuchToExpand(
                f"Working out the recurring events of this window takes more than "
                f"{settings.CALY_MAX_OCCURRENCES} occurrences; narrow the window (an earlier end) "
                "or ask for one calendar."
            )
        streams.append(_expand(master, rows, series, steps=steps, limit=limit, zone=zone, **window))
    return list(itertools.islice(heapq.merge(*streams, key=occurrence_key), limit))


def _rule_steps(series: icalendar.Calendar, *, until: dt.datetime, zone, limit: int) -> int:
    """How many occurrences the master's rules produce from its DTSTART to `until`, counted up
    to `limit` + 1: what expanding the series up to `until` costs."""
    (master,) = (c for c in series.walk("VEVENT") if "RECURRENCE-ID" not in c)
    first = master["DTSTART"].dt
    if isinstance(first, dt.datetime):
        stop = until.astimezone(first.tzinfo or zone).replace(tzinfo=None)
        first = first.replace(tzinfo=None)
    else:
        stop = until.replace(tzinfo=None)
        first = dt.datetime.combine(first, dt.time())
    rules = master.get("RRULE", [])
    steps = 0
    for rule in rules if isinstance(rules, list) else [rules]:
        # Counting in wall time is close enough for a bound, and has no UNTIL/DTSTART zone clash.
        for when in rrulestr(rule.to_ical().decode(), dtstart=first, ignoretz=True):
            if when >= stop or steps > limit:
                break
            steps += 1
    return steps


def _as_stored(master: Event, *, start, end, after) -> list[Event]:
    if master.start is None or not _overlaps(master.start, master.end or master.start, start, end):
        return []
    return [master] if after is None or occurrence_key(master) > after else []


def _overlaps(begins: dt.datetime, ends: dt.datetime, start: dt.datetime, end: dt.datetime) -> bool:
    """Does [begins, ends) meet [start, end)? An instant (begins == ends) counts where it is."""
    return begins < end and (ends > start or begins >= start)


def _in_own_zones(component: icalendar.Event, zones: Zones) -> None:
    """Re-read the component's zoned times with the zones of the object it came from.

    icalendar read each TZID with the first VTIMEZONE of that name it met in this process, which
    may be another user's "Office"; the wall times as written are kept.
    """

    def own(value, tzid: str):
        if isinstance(value, tuple):  # RDATE;VALUE=PERIOD
            return tuple(own(part, tzid) for part in value)
        return zones.localize(value, tzid) if isinstance(value, dt.datetime) else value

    for name in ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE"):
        found = component.get(name)
        if found is None:
            continue
        props = found if isinstance(found, list) else [found]
        rebuilt = []
        for prop in props:
            tzid = str(prop.params.get("TZID", ""))
            if not tzid:
                rebuilt.append(prop)
            elif name in ("EXDATE", "RDATE"):
                dates = [own(d.dt, tzid) for d in prop.dts]
                rebuilt.append(icalendar.vDDDLists(dates, dict(prop.params)))
            else:
                rebuilt.append(icalendar.vDDDTypes(own(prop.dt, tzid), dict(prop.params)))
        component[name] = rebuilt if isinstance(found, list) else rebuilt[0]


def _series_calendar(master: Event, overrides: list[Event], *, zone) -> icalendar.Calendar:
    """The master and its overrides as one calendar, whichever objects they were stored in;
    zoned times mean what the object they were written in says (as when they were synced)."""
    combined = icalendar.Calendar()
    seen_hrefs: set[str] = set()
    seen_zones: set[str] = set()
    for row in [master, *overrides]:
        if row.href in seen_hrefs:
            continue
        seen_hrefs.add(row.href)
        if not row.raw.lstrip().startswith("BEGIN:"):
            # Not iCalendar (Google keeps its event JSON): rebuild the VEVENT from the row.
            combined.add_component(_vevent_from_row(row))
            continue
        source = icalendar.Calendar.from_ical(row.raw)
        zones = Zones(source, default=zone)
        for vtimezone in source.walk("VTIMEZONE"):
            if str(vtimezone.get("TZID")) not in seen_zones:
                seen_zones.add(str(vtimezone.get("TZID")))
                combined.add_component(vtimezone)
        for component in source.walk("VEVENT"):
            if str(component.get("UID", "")).strip() == master.uid:
                _in_own_zones(component, zones)
                combined.add_component(component)
    return combined


def _from_key(key: str) -> dt.date | dt.datetime:
    """A stored recurrence key (UTC basic format, or a bare date) as a date or aware instant."""
    if len(key) == 8:
        return dt.datetime.strptime(key, "%Y%m%d").date()
    return dt.datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def _vevent_from_row(row: Event) -> icalendar.Event:
    """The VEVENT a stored row stands for, with times in the event's own zone so that a rule
    keeps its wall-clock time across daylight-saving changes."""
    zone = zone_named(row.timezone)

    def when(value: dt.datetime):
        return value.date() if row.all_day else value.astimezone(zone)

    vevent = icalendar.Event()
    vevent.add("UID", row.uid)
    vevent.add("DTSTART", when(row.start))
    if row.end is not None:
        vevent.add("DTEND", when(row.end))
    for name, value in (
        ("SUMMARY", row.summary),
        ("DESCRIPTION", row.description),
        ("LOCATION", row.location),
        ("STATUS", row.status),
    ):
        if value:
            vevent.add(name, value)
    if row.rrule:
        vevent.add("RRULE", icalendar.vRecur.from_ical(row.rrule.removeprefix("RRULE:")))
    for key in row.exdate:
        vevent.add("EXDATE", _from_key(key))
    for key in row.rdate:
        vevent.add("RDATE", _from_key(key))
    if row.recurrence_id:
        vevent.add("RECURRENCE-ID", _from_key(row.recurrence_id))
    return vevent


def _expand(
    master: Event,
    overrides: list[Event],
    series: icalendar.Calendar,
    *,
    steps: int,
    limit: int,
    start: dt.datetime,
    end: dt.datetime,
    after: OccurrenceKey | None,
    zone,
) -> Iterator[Event]:
    """The series' occurrences in [start, end) after `after`, in `occurrence_key` order, worked
    out a span at a time as they are asked for.

    recurring-ical-events' own `after()` asks dateutil for day-sized spans, halved down to 15
    minutes, and every span walks the rule from DTSTART again: a month of a daily series begun
    in 2000 took 0.9 s, the first page of a FREQ=SECONDLY series 2.5 s. Here the first span is
    sized from the rule's density (`steps` occurrences from DTSTART to `end`) to hold about
    `limit` occurrences, and each next one is twice as long (measured: 0.04 s and 0.02 s).
    """
    lo = start if after is None else max(start, after[0])
    first = master.start if master.start is not None and master.start < lo else lo
    # One more than `limit`: a page after `after` starts with the occurrence `after` names.
    span = max((end - first) * ((limit + 1) / max(steps, 1)), dt.timedelta(minutes=1))
    # recurring-ical-events reads floating times in the zone of the times it is given, dates as
    # midnight in it: the calendar's zone and UTC, as `as_instant` reads them.
    query_zone = UTC if master.all_day else zone
    query = recurring_ical_events.of(series)
    by_key = {o.recurrence_id: o for o in overrides}
    while lo < end:
        hi = lo + min(span, end - lo)
        try:
            components = query.between(lo.astimezone(query_zone), hi.astimezone(query_zone))
            found = [_occurrence(master, by_key, c, zone=zone) for c in components]
        except Exception:  # recurring-ical-events gave up on this source part way
            logger.warning("cannot expand series %s of calendar %s", master.pk, master.calendar_id)
            return
        if lo > start:
            # What began before `lo` and still runs came with the span before.
            found = [o for o in found if o.start >= lo]
        yield from sorted(
            (
                o
                for o in found
                if o.status != "CANCELLED"
                and _overlaps(o.start, o.end, start, end)
                and (after is None or occurrence_key(o) > after)
            ),
            key=occurrence_key,
        )
        lo, span = hi, span * 2


def _occurrence(master: Event, by_key: dict[str, Event], component, *, zone) -> Event:
    """One occurrence recurring-ical-events gave, as an unsaved Event of the row it comes from."""
    begins = component.get("DTSTART").dt
    all_day = not isinstance(begins, dt.datetime)
    occurrence_start = as_instant(begins, default_zone=zone)
    if component.get("DTEND") is not None:
        occurrence_end = as_instant(component["DTEND"].dt, default_zone=zone)
    elif component.get("DURATION") is not None:
        occurrence_end = occurrence_start + component["DURATION"].dt
    else:
        occurrence_end = default_end(occurrence_start, all_day=all_day)
    rid = component.get("RECURRENCE-ID")
    key = recurrence_key(rid.dt if rid is not None else begins, default_zone=zone)
    source = by_key.get(key, master)
    return Event(
        id=source.pk,
        calendar_id=master.calendar_id,
        uid=master.uid,
        recurrence_id=key,
        summary=str(component.get("SUMMARY", "")),
        description=str(component.get("DESCRIPTION", "")),
        location=str(component.get("LOCATION", "")),
        start=occurrence_start,
        end=occurrence_end,
        all_day=all_day,
        timezone=master.timezone,
        status=str(component.get("STATUS", "")).upper(),
        rrule=master.rrule,
        sync_state=source.sync_state,
        sync_error=source.sync_error,
    )


# --- the change feed ----------------------------------------------------------------------
@dataclass(frozen=True)
class FeedCursor:
    """Where a reader of the change feed is: still listing the current events (`after_event`,
    the last event id given), or in the change log after the change (`txid`, `change`).
    `read_up_to`: every change recorded before this time has been handed out (for telling a
    cursor older than the kept history)."""

    snapshot: bool
    txid: int
    change: int
    read_up_to: dt.datetime
    after_event: int = 0


@dataclass
class FeedPage:
    changes: list[tuple[str, Event | EventChange]] = field(default_factory=list)
    cursor: FeedCursor | None = None
    more: bool = False


class CursorExpired(Exception):
    """The cursor is older than the kept history: some changes after it are gone."""


def _oldest_running_txid() -> int | None:
    """Every transaction older than this one has ended (PostgreSQL); None on SQLite, which has
    one writer at a time."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        return cursor.fetchone()[0]


def changes_for_user(*, user, cursor: FeedCursor | None, limit: int) -> FeedPage:
    """The user's event changes after `cursor`, oldest first (no cursor: every current event as
    an upsert, then the changes since the listing began).

    Changes are ordered by (transaction id, id) and handed out only from transactions older
    than the oldest one still running: a transaction that commits later has a larger id than
    any handed out, so no change is skipped however the commits interleave.
    """
    now = timezone.now()
    kept = dt.timedelta(days=settings.CALY_CHANGES_RETENTION_DAYS)
    if cursor is not None and cursor.read_up_to < now - kept:
        raise CursorExpired()
    if cursor is None:
        start = _oldest_running_txid()
        if start is None:  # SQLite: the log position is simply the latest change
            last = EventChange.objects.order_by("-id").values_list("id", flat=True).first()
            cursor = FeedCursor(snapshot=True, txid=0, change=last or 0, read_up_to=now)
        else:  # changes of this transaction and later ones come after the listing
            cursor = FeedCursor(snapshot=True, txid=start - 1, change=2**62, read_up_to=now)
    if cursor.snapshot:
        rows = list(
            Event.objects.filter(calendar__account__owner=user, deleting=False)
            .filter(pk__gt=cursor.after_event)
            .defer("raw")
            .order_by("pk")[: limit + 1]
        )
        page = FeedPage(changes=[("upsert", e) for e in rows[:limit]], more=len(rows) > limit)
        if page.more:
            page.cursor = replace(cursor, after_event=rows[limit - 1].pk)
        else:
            page.cursor = replace(cursor, snapshot=False, after_event=0)
        return page
    log = EventChange.objects.filter(owner=user).filter(
        Q(txid__gt=cursor.txid) | Q(txid=cursor.txid, id__gt=cursor.change)
    )
    bound = _oldest_running_txid()
    if bound is not None:
        log = log.filter(txid__lt=bound)
    rows = list(log.order_by("txid", "id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    current = Event.objects.filter(
        pk__in=[r.event_id for r in rows if r.kind == EventChange.Kind.UPSERT], deleting=False
    ).defer("raw")
    by_id = {e.pk: e for e in current}
    # An upsert of an event deleted since: its deletion follows.
    changes = [
        ("upsert", by_id[r.event_id]) if r.kind == EventChange.Kind.UPSERT else ("delete", r)
        for r in rows
        if r.kind == EventChange.Kind.DELETE or r.event_id in by_id
    ]
    if rows:
        last = rows[-1]
        read_up_to = now if not more else last.created_at
        next_cursor = FeedCursor(
            snapshot=False, txid=last.txid, change=last.id, read_up_to=read_up_to
        )
    else:
        next_cursor = replace(cursor, read_up_to=now)
    return FeedPage(changes=changes, cursor=next_cursor, more=more)


# --- private iCalendar feeds --------------------------------------------------------------
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
        vevent = _vevent_from_row(row)
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
