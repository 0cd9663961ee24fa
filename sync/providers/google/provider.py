"""Google Calendar provider (API v3): calendars and events listed, written and watched through
one grant's `client.Client` (the client library, its token, the user's request budget).

Per sync of an unchanged account: one calendarList.list, and one events.list per calendar (by
sync token). A full listing asks for 2,500 events a page, the most Google serves.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterator

import msgspec

from sync.engine import changed_hrefs
from sync.providers.base import Provider, StoredEtags, TimedOut, TransientError
from sync.providers.google import push, writing
from sync.providers.google.client import Client
from sync.providers.google.errors import NotFound, SyncTokenExpired
from sync.providers.google.events import (
    calendar_pages,
    event_from_google,
    event_pages,
    events_decoder,
    id_of,
)
from sync.remote import (
    ChangeBatch,
    Cursor,
    Fetching,
    LocalChange,
    OutgoingWrite,
    RemoteCalendar,
    RemoteObject,
    SkippedObject,
)

logger = logging.getLogger(__name__)


# The calendar list (read-only) and the events (read and write). Accounts connected before
# Caly wrote back hold calendar.readonly only; their first write asks them to reconnect.
SCOPE = (
    "https://www.googleapis.com/auth/calendar.readonly "
    "https://www.googleapis.com/auth/calendar.events"
)
EVENTS_PAGE = 2500  # events.list maxResults: the largest page Google serves
EVENTS_PAGE_SMALLEST = 50  # a page this small that does not come in time is a failed request
CALENDARS_PAGE = 250  # calendarList.list maxResults: likewise
UTC = dt.UTC


class GoogleProvider(Provider):
    """One Google account. `credentials` holds the OAuth refresh token; `username` its address."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.client = Client(refresh_token=str(self.credentials.get("refresh_token") or ""))
        self._master_uids: dict[str, str | None] = {}

    # --- plumbing (client.py) ---------------------------------------------------------------
    def close(self) -> None:
        # The HTTP session is shared; only forget the client and its per-sync lookups.
        self.client.close()
        self._master_uids.clear()

    # --- writing back (writing.py) and push (push.py) ------------------------------------------
    supports_push = True

    @classmethod
    def encode_write(cls, change: LocalChange) -> OutgoingWrite:
        return writing.encode_write(change)

    def write(self, write: OutgoingWrite, *, calendar_id: str, etag: str) -> RemoteObject | None:
        return writing.send_write(
            self.client.execute, self.client.service, write, calendar_id=calendar_id, etag=etag
        )

    def watch(self, calendar_id: str, **channel) -> tuple[str, dt.datetime]:
        return push.watch(self.client.execute, self.client.service, calendar_id, **channel)

    def unwatch(self, *, channel_id: str, resource_id: str) -> None:
        push.unwatch(
            self.client.execute, self.client.service, channel_id=channel_id, resource_id=resource_id
        )

    # --- discovery --------------------------------------------------------------------------
    def discover(self) -> list[RemoteCalendar]:
        calendars = []
        page_token = None
        while True:
            page = self.client.execute(
                self.client.service.calendarList().list(
                    maxResults=CALENDARS_PAGE, pageToken=page_token
                ),
                what="the calendar list",
                decoder=calendar_pages,
            )
            for entry in page.items:
                if entry.deleted or not entry.id:
                    continue
                if entry.primary:
                    self.username = entry.id
                    self.client.address_verified(entry.id)
                calendars.append(
                    RemoteCalendar(
                        remote_id=entry.id,
                        name=(entry.summary_override or entry.summary)[:500] or entry.id,
                        color=entry.background_color[:32],
                        timezone=entry.time_zone,
                        writable=entry.access_role in ("owner", "writer"),
                    )
                )
            page_token = page.next_page_token
            if not page_token:
                return calendars

    # --- changes ----------------------------------------------------------------------------
    def changes(
        self,
        calendar: RemoteCalendar,
        *,
        cursor: Cursor,
        stored_etags: StoredEtags,
        fetching: Fetching = Fetching(),  # noqa: B008 - immutable
    ) -> Iterator[ChangeBatch]:
        pages = _PageSize(fetching)
        if cursor.sync_token:
            try:
                yield from self._listing(
                    calendar, sync_token=cursor.sync_token, stored_etags=stored_etags, pages=pages
                )
                return
            except SyncTokenExpired:
                logger.info(
                    "sync token of Google calendar %s expired; listing it in full",
                    calendar.remote_id,
                )
        yield from self._listing(calendar, sync_token="", stored_etags=stored_etags, pages=pages)

    def _listing(
        self,
        calendar: RemoteCalendar,
        *,
        sync_token: str,
        stored_etags: StoredEtags,
        pages: _PageSize,
    ) -> Iterator[ChangeBatch]:
        """Every page of events.list, one batch each; the last batch carries nextSyncToken.

        With a sync token Google sends only what changed (deletions as cancelled events); without
        one it lists everything, and stored events it did not list are gone. A page that does
        not come in time is asked for again with fewer events (`_PageSize`).
        """
        full = not sync_token
        listed: set[str] = set()
        instances = _InstanceIndex(stored_etags)
        page_token = None
        while True:
            self.checkpoint()
            request = self.client.service.events().list(
                calendarId=calendar.remote_id,
                maxResults=pages.size,
                pageToken=page_token,
                syncToken=sync_token or None,
            )
            try:
                page = self.client.execute(
                    request, what=self._events_of(calendar), decoder=event_pages
                )
            except TimedOut as exc:
                pages.smaller(exc, calendar)  # raises once pages are as small as they go
                continue
            except SyncTokenExpired:
                if full:  # a page token outlived its listing: start again later
                    raise TransientError(
                        "Google ended a full listing with HTTP 410; it starts again."
                    ) from None
                raise
            batch = self._batch(calendar, page.items, stored_etags, listed, instances)
            batch.fetching = pages.learnt()
            page_token = page.next_page_token
            if page_token:
                yield batch
                continue
            if full:
                known = stored_etags()
                if known and not listed:
                    self._confirm_empty(calendar)
                batch.deleted_hrefs += [h for h in known if h not in listed]
            batch.cursor = Cursor(sync_token=page.next_sync_token)
            yield batch
            return

    @staticmethod
    def _events_of(calendar: RemoteCalendar) -> str:
        return f"the events of {calendar.name or 'a calendar'}"

    def _confirm_empty(self, calendar: RemoteCalendar) -> None:
        """A calendar that held events lists as empty: ask once more before deleting them all."""
        again = self.client.execute(
            self.client.service.events().list(calendarId=calendar.remote_id, maxResults=1),
            what=self._events_of(calendar),
            decoder=event_pages,
        )
        if again.items:
            raise TransientError(
                f"Google listed no events in {calendar.name or 'a calendar'}, then some; "
                "nothing was deleted, the sync is tried again."
            )

    def _batch(self, calendar, items, stored_etags, listed, instances) -> ChangeBatch:
        batch = ChangeBatch()
        decoded = []
        for raw in items:
            try:
                item = events_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                href = id_of(raw)
                if href:
                    listed.add(href)
                    reason = f"unreadable Google event: {exc}"
                    batch.skipped.append(SkippedObject(href=href, reason=reason[:300]))
                continue
            if item.id:
                listed.add(item.id)
                decoded.append((raw, item))
        if decoded:  # an empty page of changes reads no stored etags
            page = {item.id: item.etag for _, item in decoded}
            changed = set(changed_hrefs(stored_etags(), page))
            decoded = [(raw, item) for raw, item in decoded if item.id in changed]
        for raw, item in decoded:
            href, etag = item.id, item.etag
            master_id = item.recurring_event_id
            if item.status == "cancelled" and not master_id:
                # A deleted event; a recurring one takes its stored exceptions along.
                batch.deleted_hrefs.append(href)
                batch.deleted_hrefs += instances.of(href)
                continue
            try:
                uid = item.ical_uid or (
                    self._master_uid(calendar, master_id) if master_id else None
                )
                if uid is None:
                    # The occurrence of a series that no longer exists.
                    batch.deleted_hrefs.append(href)
                    continue
                event = event_from_google(item, uid=uid, calendar_timezone=calendar.timezone)
            except (KeyError, TypeError, ValueError) as exc:
                reason = f"unreadable Google event: {type(exc).__name__}: {exc}"
                batch.skipped.append(SkippedObject(href=href, reason=reason[:300]))
                continue
            if item.recurrence:
                self._master_uids[href] = uid
            elif master_id:
                self._master_uids.setdefault(master_id, uid)
                instances.add(master_id, href)
            batch.objects.append(
                RemoteObject(href=href, etag=etag, events=(event,), raw=str(raw, "utf-8"))
            )
        return batch

    def _master_uid(self, calendar: RemoteCalendar, master_id: str) -> str | None:
        """The iCalUID of a recurring event, which Google leaves out of cancelled occurrences."""
        if master_id not in self._master_uids:
            try:
                master = self.client.execute(
                    self.client.service.events().get(
                        calendarId=calendar.remote_id, eventId=master_id
                    ),
                    what="a recurring event",
                    decoder=events_decoder,
                )
            except (NotFound, SyncTokenExpired):
                master = None
            alive = master is not None and master.status != "cancelled"
            self._master_uids[master_id] = (master.ical_uid or None) if alive else None
        return self._master_uids[master_id]


class _InstanceIndex:
    """Stored hrefs of exceptions by their series: Google names them `<series id>_<start>`."""

    def __init__(self, stored_etags: StoredEtags):
        self._stored_etags = stored_etags
        self._index: dict[str, set[str]] | None = None

    def _build(self) -> dict[str, set[str]]:
        if self._index is None:
            self._index = defaultdict(set)
            for href in self._stored_etags():
                series, sep, _ = href.rpartition("_")
                if sep:
                    self._index[series].add(href)
        return self._index

    def add(self, master_id: str, href: str) -> None:
        self._build()[master_id].add(href)

    def of(self, master_id: str) -> list[str]:
        return sorted(self._build().get(master_id, ()))


class _PageSize:
    """events.list's maxResults for one calendar: the largest page, or the size that last came
    in time (`Fetching.batch`); halved when a page does not come within CALY_HTTP_TIMEOUT."""

    def __init__(self, fetching: Fetching):
        self.size = min(fetching.batch or EVENTS_PAGE, EVENTS_PAGE)
        self._kept = fetching

    def smaller(self, exc: TimedOut, calendar: RemoteCalendar) -> None:
        if self.size <= EVENTS_PAGE_SMALLEST:
            raise exc
        self.size = max(EVENTS_PAGE_SMALLEST, self.size // 2)
        logger.info(
            "Google calendar %s: %s Asking for %d events a page.",
            calendar.remote_id,
            exc,
            self.size,
        )

    def learnt(self) -> Fetching | None:
        """The page size to keep, for the batch it goes with, when it changed."""
        now = Fetching(batch=0 if self.size == EVENTS_PAGE else self.size)
        if now == self._kept:
            return None
        self._kept = now
        return now
