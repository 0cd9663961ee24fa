"""Reads of the synced data, always scoped to one user."""

from __future__ import annotations

import datetime as dt
import logging
import warnings

import icalendar
import recurring_ical_events
from django.db.models import Q, QuerySet

from calendars.models import Account, Calendar, Event
from calendars.timezones import Zones, as_instant, default_end, recurrence_key, zone_named

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


def events_for_user(*, user, calendar_id: int | None = None) -> QuerySet[Event]:
    """Stored rows (masters, overrides, single events); see `events_in_window` for a time window."""
    qs = Event.objects.filter(calendar__account__owner=user)
    if calendar_id is not None:
        qs = qs.filter(calendar_id=calendar_id)
    return qs.defer("raw").order_by("start", "id")


# --- occurrences in a time window ---------------------------------------------------------
# A series yields at most this many occurrences per window (FREQ=MINUTELY for a year would
# otherwise be half a million).
MAX_OCCURRENCES_PER_SERIES = 5000
MAX_WINDOW = dt.timedelta(days=366 * 2)
# Floating and all-day times are compared after conversion; look this much wider first.
_MARGIN = dt.timedelta(days=2)


def events_in_window(
    *, user, start: dt.datetime, end: dt.datetime, calendar_id: int | None = None
) -> list[Event]:
    """Every occurrence overlapping [start, end), recurring series expanded, soonest first.

    Series are expanded from their stored source with recurring-ical-events, so RRULE, RDATE,
    EXDATE and overridden instances (RECURRENCE-ID) count as the server wrote them. Cancelled
    occurrences (STATUS:CANCELLED) are left out. Each item is an unsaved `Event` carrying the
    occurrence's own start/end and texts, and the id of the row it comes from.
    """
    calendars = Calendar.objects.filter(account__owner=user)
    if calendar_id is not None:
        calendars = calendars.filter(pk=calendar_id)
    zones = dict(calendars.values_list("id", "timezone"))
    in_scope = Event.objects.filter(calendar_id__in=list(zones))
    recurring = ~Q(rrule="") | ~Q(rdate=[])
    masters = list(
        in_scope.filter(recurring, recurrence_id="")
        .filter(Q(start__lt=end) | Q(start__isnull=True))
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
        )
    )
    series_keys = {(m.calendar_id, m.uid) for m in masters}

    occurrences: list[Event] = []
    singles = (
        in_scope.exclude(recurring)
        .filter(start__lt=end)
        .filter(Q(end__gt=start) | Q(start__gte=start))
        .exclude(status="CANCELLED")
        .defer("raw")
    )
    for event in singles:
        if event.recurrence_id and (event.calendar_id, event.uid) in series_keys:
            continue  # an overridden instance: its series below yields it
        occurrences.append(event)

    overrides: dict[tuple[int, str], list[Event]] = {}
    if masters:
        for row in in_scope.filter(uid__in={m.uid for m in masters}).exclude(recurrence_id=""):
            overrides.setdefault((row.calendar_id, row.uid), []).append(row)
    for master in masters:
        rows = overrides.get((master.calendar_id, master.uid), [])
        occurrences.extend(
            _expand(master, rows, start=start, end=end, zone=zone_named(zones[master.calendar_id]))
        )
    occurrences.sort(key=lambda e: (e.start, e.uid, e.recurrence_id, e.pk))
    return occurrences


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
    master: Event, overrides: list[Event], *, start: dt.datetime, end: dt.datetime, zone
) -> list[Event]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            query = recurring_ical_events.of(_series_calendar(master, overrides, zone=zone))
            found = []
            for component in query.after(start - _MARGIN):
                begins = component.get("DTSTART").dt
                if as_instant(begins, default_zone=zone) >= end + _MARGIN:
                    break
                found.append(component)
                if len(found) >= MAX_OCCURRENCES_PER_SERIES:
                    break
    except Exception:  # a source recurring-ical-events cannot expand: show the stored row
        logger.warning("cannot expand series %s of calendar %s", master.pk, master.calendar_id)
        return [master] if master.start and master.start < end else []
    by_key = {o.recurrence_id: o for o in overrides}
    result = []
    for component in found:
        if str(component.get("STATUS", "")).upper() == "CANCELLED":
            continue
        begins = component.get("DTSTART").dt
        all_day = not isinstance(begins, dt.datetime)
        occurrence_start = as_instant(begins, default_zone=zone)
        if component.get("DTEND") is not None:
            occurrence_end = as_instant(component["DTEND"].dt, default_zone=zone)
        elif component.get("DURATION") is not None:
            occurrence_end = occurrence_start + component["DURATION"].dt
        else:
            occurrence_end = default_end(occurrence_start, all_day=all_day)
        if not _overlaps(occurrence_start, occurrence_end, start, end):
            continue
        rid = component.get("RECURRENCE-ID")
        key = recurrence_key(rid.dt if rid is not None else begins, default_zone=zone)
        source = by_key.get(key, master)
        result.append(
            Event(
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
            )
        )
    return result
