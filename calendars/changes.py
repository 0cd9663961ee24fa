"""The change feed's reads: every current event, then each change after it (`changes_for_user`).

The changes are recorded by the database (migration 0006's triggers, `EventChange`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from calendars.models import Event, EventChange


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
