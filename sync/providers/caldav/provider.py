"""CalDAV provider (RFC 4791 / 6578 / 6764): discovery (`discovery.py`), then per calendar
sync-collection with the stored token, or the ctag and a comparison of etags, and objects
fetched by calendar-multiget in batches, parsed as they stream in (`dav.py`). What each costs,
and how truncated or refused answers are handled: docs/caldav.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Generator, Iterator, Mapping
from urllib.parse import urlsplit

import caldav
from django.utils import timezone

from sync.engine import changed_hrefs, empty_listing_confirmed, listing_diff, normalize_href
from sync.providers.base import (
    AuthError,
    ConnectError,
    Provider,
    ProviderError,
    StoredEtags,
    TimedOut,
    TransientError,
)
from sync.providers.caldav.dav import (
    CTAG_BODY,
    ETAG_LIST_BODY,
    MAX_CONTINUATIONS,
    QUERY_BODY,
    SYNC_BODY,
    CalendarInfo,
    CollectionGone,
    DAVSession,
    EmptyListingRefused,
    Listing,
    Multistatus,
    SyncReportFailed,
    bound_listing,
    sync_token_of,
    xml_escape,
)
from sync.providers.caldav.discovery import ctag_of, discovery_client, find_home, list_calendars
from sync.providers.caldav.fetching import Fetcher, batch_size
from sync.providers.caldav.writing import encode_write, send_write
from sync.remote import (
    ChangeBatch,
    Cursor,
    Fetching,
    LocalChange,
    OutgoingWrite,
    RemoteCalendar,
    RemoteObject,
)

logger = logging.getLogger(__name__)

# How long a calendar whose server refused sync-collection syncs by ctag before trying again.
SYNC_REFUSAL_KEPT = dt.timedelta(days=1)


class CalDAVProvider(Provider):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client: caldav.DAVClient | None = None  # for discovery only
        password = self.credentials.get("password") or ""
        self._dav = DAVSession(url=self.url, username=self.username, password=password)
        self._calendars: dict[str, CalendarInfo] | None = None

    def close(self) -> None:
        # The session is shared; only forget the discovery client.
        self._client = None

    # --- writing back (writing.py) ----------------------------------------------------------
    @classmethod
    def encode_write(cls, change: LocalChange) -> OutgoingWrite:
        return encode_write(change)

    def write(self, write: OutgoingWrite, *, calendar_id: str, etag: str) -> RemoteObject | None:
        return send_write(self._dav, write, calendar_id=calendar_id, etag=etag)

    # --- discovery -----------------------------------------------------------------------
    def _find_home(self) -> str:
        if self._client is None:
            password = self.credentials.get("password") or ""
            self._client = discovery_client(self.url, self.username, password)
        return find_home(self._client, self.url, host=self._dav.host())

    def _list_calendars(self, home: str) -> list[RemoteCalendar]:
        calendars, self._calendars = list_calendars(self._dav, home, with_ctag=self._wants_ctags())
        return calendars

    def discover(self) -> list[RemoteCalendar]:
        try:
            try:
                home = self.home_url or self._find_home()
                calendars = self._list_calendars(home)
            except CollectionGone:
                if not self.home_url:
                    raise
                # The calendar home found last time is gone (the server moved it): look again.
                self.home_url = ""
                home = self._find_home()
                calendars = self._list_calendars(home)
            if not calendars and home == self.url:
                raise ConnectError(f"No CalDAV calendars found at {self.url}.")
        except ProviderError as exc:
            # Transient errors stay transient so a sync backs off and retries; connecting an
            # account reports them like any other ProviderError.
            if isinstance(exc, (AuthError, ConnectError, TransientError)):
                raise
            raise ConnectError(f"{self.url} does not look like a CalDAV server: {exc}") from exc
        self.home_url = home
        return calendars

    def _wants_ctags(self) -> bool:
        """Does a calendar sync by ctag (no sync-collection, or refused)? Its ctag then comes with
        the calendar list rather than by a PROPFIND of its own."""
        return any(
            not c.sync_token and (c.ctag or _refused_recently(c)) for c in self.cursors.values()
        )

    # --- changes -------------------------------------------------------------------------
    def changes(
        self,
        calendar: RemoteCalendar,
        *,
        cursor: Cursor,
        stored_etags: StoredEtags,
        fetching: Fetching = Fetching(),  # noqa: B008 - immutable
    ) -> Iterator[ChangeBatch]:
        if self._calendars is None:
            self._list_calendars(self.home_url or self._find_home())
        info = self._calendars.get(normalize_href(urlsplit(calendar.remote_id).path))
        supports_sync = info.supports_sync if info is not None else None
        refused_at = cursor.sync_refused_at if _refused_recently(cursor) else None
        fetcher = Fetcher(self._dav, calendar, checkpoint=self.checkpoint, fetching=fetching)
        if supports_sync is not False and refused_at is None:
            try:
                yield from self._changes_by_sync_token(
                    fetcher, cursor=cursor, stored_etags=stored_etags
                )
                return
            except SyncReportFailed as exc:
                logger.info(
                    "sync-collection unusable on %s (%s); comparing etags instead",
                    urlsplit(calendar.remote_id).path,
                    exc,
                )
                refused_at = timezone.now()  # not asked again for a day
        yield from self._changes_by_ctag(
            fetcher,
            cursor=cursor,
            stored_etags=stored_etags,
            new_cursor=lambda ctag: Cursor(ctag=ctag, sync_refused_at=refused_at),
        )

    # sync-collection (RFC 6578)
    def _changes_by_sync_token(self, fetcher: Fetcher, *, cursor, stored_etags):
        calendar = fetcher.calendar
        url = calendar.remote_id
        if cursor.sync_token:
            try:
                listing = self._sync_listing(url, cursor.sync_token)
            except SyncReportFailed as exc:
                logger.info(
                    "sync token of %s not accepted (%s); resyncing fully", urlsplit(url).path, exc
                )
            else:
                # Nothing listed: the stored etags are not even read.
                to_fetch = changed_hrefs(stored_etags(), listing.changed) if listing.changed else []
                yield from fetcher.fetch(
                    to_fetch, listing.deleted, Cursor(sync_token=listing.token)
                )
                return
        known = stored_etags()
        if not known and not fetcher.by_listing:
            try:
                yield from self._initial_by_sync(fetcher)
                return
            except TimedOut as exc:
                yield from fetcher.list_first(exc)
                known = fetcher.fetched  # stored by this sync before the answer stalled
        listing = yield from self._full_listing(fetcher)
        listed = self._guard_empty(
            calendar, known, listing, state_changed=_moved(cursor.sync_token, listing.token)
        )
        yield from self._fetch_differences(fetcher, known, listed, Cursor(sync_token=listing.token))

    def _full_listing(self, fetcher: Fetcher) -> Generator[ChangeBatch, None, Listing]:
        """Every object's href and etag, with the sync token they go with: sync-collection
        from no token, or (for a calendar whose server cannot answer that in time) PROPFIND.
        Yields what it learnt on the way (`Fetcher.list_first`)."""
        url = fetcher.calendar.remote_id
        if not fetcher.by_listing:
            try:
                return self._sync_listing(url, "")
            except TimedOut as exc:
                yield from fetcher.list_first(exc)
        listing = self._etag_listing(url)
        if listing.token:
            return listing
        raise SyncReportFailed("no sync token in the calendar's properties")

    def _sync_report(self, url: str, token: str, *, with_data: bool) -> Multistatus:
        body = SYNC_BODY.format(
            token=xml_escape(token), data="<c:calendar-data/>" if with_data else ""
        )
        response = self._dav.send("REPORT", url, body, depth="1")
        status = response.status_code
        if status != 207:
            detail = response.text[:500] if status < 500 else ""
            response.close()
            reason = "invalid sync token" if "valid-sync-token" in detail else f"HTTP {status}"
            raise SyncReportFailed(reason)
        return Multistatus(response, url)

    def _sync_listing(self, url: str, token: str) -> Listing:
        """Every change since `token` (everything, for ""), following 507 continuations."""
        listing = Listing()
        for _ in range(MAX_CONTINUATIONS):
            self.checkpoint()
            answer = self._sync_report(url, token, with_data=False)
            for item in answer:
                listing.record(item, url)
            if not answer.token:
                raise SyncReportFailed("no sync token in the answer")
            listing.token = answer.token
            if not answer.truncated:
                return listing
            if answer.token == token:
                raise ProviderError(
                    f"{urlsplit(url).path}: the server truncated its answer "
                    "without moving its sync token."
                )
            token = answer.token
        raise ProviderError(f"{urlsplit(url).path}: the server never finished its listing.")

    def _initial_by_sync(self, fetcher: Fetcher) -> Iterator[ChangeBatch]:
        """First sync: the objects come with the listing, parsed and stored batch by batch."""
        url = fetcher.calendar.remote_id
        token = ""
        missing: list[str] = []
        deleted: list[str] = []
        for _ in range(MAX_CONTINUATIONS):
            self.checkpoint()
            try:
                answer = self._sync_report(url, token, with_data=True)
            except (AuthError, TransientError):
                raise
            except ProviderError as exc:
                if token:
                    raise
                # Refused with the data (Radicale answers 400 past 10,000 VEVENTs in one
                # REPORT) or too big for one answer: list the etags, fetch in multiget batches.
                # Without sync-collection at all, the listing fails too and the ctag path
                # takes over.
                logger.info("%s: data in sync-collection failed (%s)", urlsplit(url).path, exc)
                listing = yield from self._full_listing(fetcher)
                yield from fetcher.fetch(
                    list(listing.changed),
                    [],
                    Cursor(sync_token=listing.token),
                    listed=len(listing.changed),
                )
                return
            batch = ChangeBatch()
            for item in answer:
                if item.status == 404:
                    deleted.append(item.href)
                    bound_listing(len(deleted) + len(missing), url)
                elif item.status == 200 and not item.is_collection and not item.is_self:
                    if item.data is None:
                        missing.append(item.href)  # data not sent in the report: multiget it
                        bound_listing(len(deleted) + len(missing), url)
                    else:
                        fetcher.add(batch, item)
                        if len(batch.objects) + len(batch.skipped) >= batch_size():
                            yield fetcher.handed(batch)
                            batch = ChangeBatch()
            if batch.objects or batch.skipped:
                yield fetcher.handed(batch)
            if not answer.token:
                raise SyncReportFailed("no sync token in the answer")
            if not answer.truncated:
                break
            if answer.token == token:
                raise ProviderError(
                    f"{urlsplit(url).path}: the server truncated its answer "
                    "without moving its sync token."
                )
            token = answer.token
        else:
            raise ProviderError(f"{urlsplit(url).path}: the server never finished its listing.")
        yield from fetcher.fetch(missing, deleted, Cursor(sync_token=answer.token))

    # servers without sync-collection: ctag, then etags
    def _changes_by_ctag(
        self, fetcher: Fetcher, *, cursor, stored_etags, new_cursor
    ) -> Iterator[ChangeBatch]:
        calendar = fetcher.calendar
        url = calendar.remote_id
        info = self._calendars.get(normalize_href(urlsplit(url).path)) if self._calendars else None
        ctag = info.ctag if info is not None and info.ctag is not None else self._ctag(url)
        if ctag and ctag == cursor.ctag and not cursor.sync_token:
            yield ChangeBatch(cursor=new_cursor(ctag))
            return
        known = stored_etags()
        if not known and not fetcher.by_listing:
            try:
                yield from self._initial_by_query(fetcher, new_cursor(ctag))
                return
            except TimedOut as exc:
                yield from fetcher.list_first(exc)
                known = fetcher.fetched
        listed = self._guard_empty(
            calendar, known, self._etag_listing(url), state_changed=_moved(cursor.ctag, ctag)
        )
        yield from self._fetch_differences(fetcher, known, listed, new_cursor(ctag))

    def _ctag(self, url: str) -> str:
        for item in self._dav.multistatus("PROPFIND", url, CTAG_BODY, depth="0"):
            if item.props is not None and item.is_self:
                return ctag_of(item)
        return ""

    def _etag_listing(self, url: str) -> Listing:
        """Every object's href and etag, and the collection's sync token if it has one
        (PROPFIND Depth 1); a 507 leaves it `truncated`, and a PROPFIND cannot be continued."""
        listing = Listing()
        answer = self._dav.multistatus("PROPFIND", url, ETAG_LIST_BODY, depth="1")
        for item in answer:
            if item.is_self and item.props is not None:
                listing.token = sync_token_of(item)
            elif item.status == 200 and not item.is_collection and not item.is_self:
                listing.changed[item.href] = item.etag
                bound_listing(len(listing.changed), url)
        listing.truncated = answer.truncated
        if listing.truncated:
            logger.warning(
                "%s: the server cut its listing short after %d objects",
                urlsplit(url).path,
                len(listing.changed),
            )
        return listing

    def _initial_by_query(self, fetcher: Fetcher, cursor: Cursor) -> Iterator[ChangeBatch]:
        """First sync without sync-collection: one calendar-query streams every event."""
        url = fetcher.calendar.remote_id
        batch = ChangeBatch()
        try:
            answer = self._dav.multistatus("REPORT", url, QUERY_BODY, depth="1")
        except (AuthError, TransientError):
            raise
        except ProviderError as exc:
            # Refused as too big (see _initial_by_sync): list the etags, multiget in batches.
            logger.info("%s: calendar-query failed (%s)", urlsplit(url).path, exc)
            yield from self._fetch_differences(fetcher, {}, self._etag_listing(url), cursor)
            return
        for item in answer:
            if item.status != 200 or item.is_collection or item.data is None:
                continue
            bound_listing(len(fetcher.fetched) + len(batch.objects) + 1, url)
            fetcher.add(batch, item)
            if len(batch.objects) + len(batch.skipped) >= batch_size():
                yield fetcher.handed(batch)
                batch = ChangeBatch()
        if not answer.truncated:
            batch.cursor = cursor
            yield fetcher.handed(batch)
            return
        # The server capped the query: whatever it left out comes by etag and multiget.
        yield fetcher.handed(batch)
        yield from self._fetch_differences(
            fetcher, fetcher.fetched, self._etag_listing(url), cursor, deletes=False
        )

    # fetching
    def _guard_empty(
        self, calendar, known: Mapping[str, str], listed: Listing, *, state_changed
    ) -> Listing:
        """A full listing with nothing in it must not wipe a calendar that holds events."""
        if listed.changed or listed.truncated or not known:
            return listed
        second = self._etag_listing(calendar.remote_id)
        if second.changed or second.truncated:
            logger.warning(
                "%s listed as empty, then with %d objects; using the second listing",
                urlsplit(calendar.remote_id).path,
                len(second.changed),
            )
            return second
        if empty_listing_confirmed(second_listing=0, state_changed=state_changed):
            return listed
        raise EmptyListingRefused(
            f'Calendar "{calendar.name}" suddenly listed no events although Caly holds '
            f"{len(known)} from it, and the server's sync state did not change; nothing was "
            "deleted. If the calendar really is empty, the next sync after a change on the "
            "server will confirm it."
        )

    def _fetch_differences(
        self,
        fetcher: Fetcher,
        known: Mapping[str, str],
        listed: Listing,
        cursor: Cursor,
        *,
        deletes=True,
    ) -> Iterator[ChangeBatch]:
        """Fetch what a full listing shows changed and delete what it no longer shows; from a
        truncated listing only fetch what it shows, and keep the cursor where it was."""
        if listed.truncated:
            to_fetch, deleted = changed_hrefs(known, listed.changed), []
        elif deletes:
            to_fetch, deleted = listing_diff(known, listed.changed)
        else:
            to_fetch, deleted = changed_hrefs(known, listed.changed), []
        yield from fetcher.fetch(
            to_fetch,
            deleted,
            cursor,
            listing_cut=listed.truncated,
            listed=len(listed.changed),
        )


def _moved(old: str, new: str) -> bool | None:
    """Did the server's sync state move? None when there is nothing to compare."""
    if not old or not new:
        return None
    return old != new


def _refused_recently(cursor: Cursor) -> bool:
    refused_at = cursor.sync_refused_at
    return refused_at is not None and timezone.now() - refused_at < SYNC_REFUSAL_KEPT
