"""Storing what a sync brought: one batch of changes applied to a calendar's events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import MD5
from django.utils import timezone
from psycopg2.extras import Json, execute_values

from calendars.models import Calendar, Event, EventChange
from sync import sql
from sync.engine import EventWrite, Plan, StoredEvent, normalize_href, plan_changes
from sync.models import PendingWrite
from sync.remote import ChangeBatch, SkippedObject
from sync.services.webhooks import events_changed_record

# The fields a sync writes; the rest (ids, created_at) are kept when a stored event changes.
EVENT_FIELDS = (
    "href",
    "etag",
    "summary",
    "description",
    "location",
    "start",
    "end",
    "all_day",
    "timezone",
    "status",
    "rrule",
    "rdate",
    "exdate",
    "raw",
    "remote_last_modified",
    "updated_at",
)
EVENT_LIMITS = {
    name: Event._meta.get_field(name).max_length
    for name in ("href", "etag", "uid", "recurrence_id", "timezone", "status")
}
UPSERT_PAGE = 500  # rows per INSERT statement


def events_apply(
    *,
    calendar: Calendar,
    batch: ChangeBatch,
    nothing_stored: bool = False,
    fence: Callable[[], None] | None = None,
    own_write: bool = False,
) -> Plan:
    """Store one batch of changes; the calendar's cursor moves only with the last batch.

    Everything the batch writes (deletions, moved hrefs, the events, the cursor) is one
    transaction. A batch with nothing in it and the cursor where it was (a sync that found no
    change) costs no statement at all. `nothing_stored`: the calendar has no events yet (it was
    added by this sync and this is its first batch), so there is nothing to compare with.
    `fence` is called first in that transaction and raises to write nothing (the sync's lease,
    `sync.leases.lease_fence`).

    Events with a write of Caly's still on its way to the server are left as they are (that
    write, conditional on the etag Caly knew, finds out whether the server changed them), except
    when the batch is what that very write brought back (`own_write`).
    """
    cursor = batch.cursor
    if (
        not (batch.objects or batch.deleted_hrefs)
        and batch.fetching is None
        and (
            cursor is None
            or (cursor.sync_token, cursor.ctag, cursor.sync_refused_at)
            == (calendar.sync_token, calendar.ctag, calendar.sync_refused_at)
        )
    ):
        return Plan()
    _skip_oversized(batch)
    # Read outside the writing transaction: the account's lease keeps other syncs away.
    stored = [] if nothing_stored else _events_stored(calendar, batch)
    plan = plan_changes(stored=stored, objects=batch.objects, deleted_hrefs=batch.deleted_hrefs)
    # A write of Caly's is for an event stored here (created, edited or marked deleting), so a
    # batch that touches no stored event has none to leave out.
    if stored and not own_write and (plan.writes or plan.delete_ids or plan.relocate):
        _keep_pending(plan, calendar=calendar, stored=stored)
    with transaction.atomic():
        if fence is not None:
            fence()
        if plan.delete_ids:
            Event.objects.filter(pk__in=plan.delete_ids).delete()
        if plan.relocate:
            moved = [
                Event(pk=pk, href=normalize_href(w.href), etag=w.etag) for pk, w in plan.relocate
            ]
            Event.objects.bulk_update(moved, ["href", "etag"])
        if plan.writes:
            ids = _events_upsert(calendar, plan.writes)
            plan.created_ids, plan.updated_ids = ids[: len(plan.create)], ids[len(plan.create) :]
        if not own_write and (plan.writes or plan.delete_ids):
            # Apps learn of it through their webhooks, recorded in this same transaction.
            events_changed_record(
                account_id=calendar.account_id, calendar_id=calendar.pk, plan=plan
            )
        if batch.fetching is not None:
            calendar.fetch_by_listing = batch.fetching.by_listing
            calendar.fetch_batch = batch.fetching.batch
            calendar.save(update_fields=["fetch_by_listing", "fetch_batch"])
        if cursor is not None:
            calendar.sync_token, calendar.ctag = cursor.sync_token, cursor.ctag
            calendar.sync_refused_at = cursor.sync_refused_at
            calendar.last_synced_at = timezone.now()
            calendar.save(update_fields=["sync_token", "ctag", "sync_refused_at", "last_synced_at"])
    return plan


def _keep_pending(plan: Plan, *, calendar: Calendar, stored: list[StoredEvent]) -> None:
    """Leave out of `plan` the events with a write of Caly's pending (see `events_apply`)."""
    pending = set(
        PendingWrite.objects.filter(
            calendar=calendar, state=PendingWrite.State.PENDING
        ).values_list("uid", flat=True)
    )
    if not pending:
        return
    uid_of = {s.id: s.uid for s in stored}
    plan.create = [w for w in plan.create if w.event.uid not in pending]
    plan.update = [w for w in plan.update if w.event.uid not in pending]
    plan.relocate = [(pk, w) for pk, w in plan.relocate if w.event.uid not in pending]
    plan.delete_ids = [pk for pk in plan.delete_ids if uid_of.get(pk) not in pending]


def _events_upsert(calendar: Calendar, writes: list[EventWrite]) -> list[int]:
    """Insert or overwrite the events of `writes`; their ids, in the same order."""
    if sql.in_use():
        now = timezone.now()
        rows = [_event_fields(w) for w in writes]
        for row in rows:
            row.update(calendar_id=calendar.pk, now=now)
            row["rdate"], row["exdate"] = Json(row["rdate"]), Json(row["exdate"])
        with connection.cursor() as cursor:
            stored = execute_values(
                cursor,
                sql.EVENT_UPSERT,
                rows,
                template=sql.EVENT_UPSERT_ROW,
                page_size=UPSERT_PAGE,
                fetch=True,
            )
        return [pk for (pk,) in stored]
    stored = Event.objects.bulk_create(
        [Event(calendar=calendar, **_event_fields(w)) for w in writes],
        batch_size=UPSERT_PAGE,
        update_conflicts=True,
        unique_fields=["calendar", "uid", "recurrence_id"],
        update_fields=EVENT_FIELDS,
    )
    return [row.pk for row in stored]


def _event_fields(write: EventWrite) -> dict:
    """What a sync stores of an event, by field name (EVENT_FIELDS, with its identity)."""
    event = write.event
    return {
        "uid": event.uid,
        "recurrence_id": event.recurrence_id,
        "href": normalize_href(write.href),
        "etag": write.etag,
        "summary": event.summary,
        "description": event.description,
        "location": event.location,
        "start": event.start,
        "end": event.end,
        "all_day": event.all_day,
        "timezone": event.timezone,
        "status": event.status,
        "rrule": event.rrule,
        "rdate": list(event.rdate),
        "exdate": list(event.exdate),
        "raw": write.raw,
        "remote_last_modified": event.last_modified,
    }


def _events_stored(calendar: Calendar, batch: ChangeBatch) -> list[StoredEvent]:
    """The stored events a batch touches: by href (changed or deleted objects) or by UID."""
    hrefs = {normalize_href(o.href) for o in batch.objects}
    hrefs |= {normalize_href(h) for h in batch.deleted_hrefs}
    uids = {e.uid for o in batch.objects for e in o.events}
    return [
        StoredEvent(*row)
        for row in Event.objects.filter(calendar=calendar)
        .filter(Q(href__in=hrefs) | Q(uid__in=uids))
        .annotate(raw_digest=MD5("raw"))
        .values_list("id", "uid", "recurrence_id", "href", "etag", "raw_digest")
    ]


def _skip_oversized(batch: ChangeBatch) -> None:
    """An object with a value longer than its column is skipped and named, not fatal to the run."""
    kept = []
    for obj in batch.objects:
        too_long = [
            name
            for name, value in (("href", obj.href), ("etag", obj.etag))
            if len(value) > EVENT_LIMITS[name]
        ] + [
            name
            for event in obj.events
            for name in ("uid", "recurrence_id", "timezone", "status")
            if len(getattr(event, name)) > EVENT_LIMITS[name]
        ]
        if too_long:
            reason = f"{', '.join(sorted(set(too_long)))} too long to store"
            batch.skipped.append(SkippedObject(href=obj.href[:300], reason=reason))
        else:
            kept.append(obj)
    batch.objects = kept


def event_changes_prune() -> int:
    """Forget changes (tombstones included) older than CALY_CHANGES_RETENTION_DAYS; a feed
    cursor from before then is answered 410 (`calendars.changes.changes_for_user`)."""
    horizon = timezone.now() - dt.timedelta(days=settings.CALY_CHANGES_RETENTION_DAYS)
    deleted, _ = EventChange.objects.filter(created_at__lt=horizon).delete()
    return deleted
