"""CalDAV provider (RFC 4791 / 6578 / 6764): discovery on python-caldav, syncing on Caly's own XML.

What a sync costs: one PROPFIND for the calendar list, then per calendar
- with sync-collection (RFC 6578): one REPORT with the stored token, plus calendar-multiget
  batches for what changed; the first sync asks for the data in the same REPORT;
- without it: one PROPFIND for the ctag; only if it moved, a PROPFIND of every etag and
  calendar-multiget batches for the objects whose etag changed.
An invalid or expired token, or any failing REPORT, turns into a full listing compared with the
stored etags, so row ids stay and only real differences are written. A result the server
truncated (507 inside the multistatus) is continued with the token it returned; a listing that
cannot be continued (PROPFIND) never deletes, and the cursor only moves on once every object
asked for came back (or is gone).

A server that refuses sync-collection although it offers it is not asked again for a day: the
calendar syncs by ctag, which the calendar list then brings along.

Answers are parsed as they stream in and handed over in batches, so a calendar of any size is
never held in memory at once; the server's calendar-data text is kept as the raw source.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urljoin, urlsplit

import caldav
import niquests
from caldav.lib import error as caldav_error
from caldav.lib.url import URL
from django.conf import settings
from django.utils import timezone
from lxml import etree

from sync import http
from sync.engine import changed_hrefs, empty_listing_confirmed, listing_diff, normalize_href
from sync.ical import MalformedObject, parse_object
from sync.providers.base import (
    AuthError,
    ConnectError,
    Provider,
    ProviderError,
    StoredEtags,
    TransientError,
)
from sync.providers.caldav.dav import (
    AUTH_REFUSED,
    CALENDAR_LIST_BODY,
    CALENDAR_LIST_CTAG,
    CTAG_BODY,
    ETAG_LIST_BODY,
    MAX_CALENDARS,
    MAX_CONTINUATIONS,
    MAX_LISTED_OBJECTS,
    MULTIGET_HEAD,
    NS,
    QUERY_BODY,
    SYNC_BODY,
    CalendarInfo,
    CollectionGone,
    DAVSession,
    EmptyListingRefused,
    Item,
    Listing,
    Multistatus,
    SyncReportFailed,
    vtimezone_id,
    xml_escape,
)
from sync.remote import ChangeBatch, Cursor, RemoteCalendar, RemoteObject, SkippedObject

logger = logging.getLogger(__name__)

# How long a calendar whose server refused sync-collection syncs by ctag before trying again.
SYNC_REFUSAL_KEPT = dt.timedelta(days=1)
# What the run's skipped list says of objects a sync could not get; the cursor stays put.
NOT_SENT = "the server left it out of its answer; Caly asks for it again at the next sync"
LISTING_CUT = (
    "the server cut its list of events short (HTTP 507): events it did not list were neither "
    "updated nor deleted; Caly lists them again at the next sync"
)


class CalDAVProvider(Provider):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client: caldav.DAVClient | None = None
        password = self.credentials.get("password") or ""
        self._dav = DAVSession(url=self.url, username=self.username, password=password)
        self._calendars: dict[str, CalendarInfo] | None = None

    # --- discovery client ----------------------------------------------------------------
    @property
    def client(self) -> caldav.DAVClient:
        """python-caldav, for discovery only (RFC 6764 and principal lookups)."""
        if self._client is None:
            self._client = caldav.DAVClient(
                url=self.url,
                username=self.username or None,
                password=self.credentials.get("password") or None,
                timeout=settings.CALY_HTTP_TIMEOUT,
                enable_rfc6764=False,
                headers={"User-Agent": http.USER_AGENT},
            )
            # One pooled session for every account, with Caly's timeout and no cookies.
            self._client.session = http.session()
        return self._client

    def close(self) -> None:
        # The session is shared; only forget the client.
        self._client = None

    # --- discovery -----------------------------------------------------------------------
    def _find_home(self) -> str:
        """Server root, principal or calendar home → the calendar home URL (RFC 6764 §5)."""
        candidates = [self.url, urljoin(self.url, "/.well-known/caldav")]
        for candidate in candidates:
            try:
                self.client.url = URL.objectify(candidate)
                principal = self.client.principal()
                return str(principal.calendar_home_set.url)
            except caldav_error.AuthorizationError as exc:
                raise AuthError(AUTH_REFUSED) from exc
            except caldav_error.RateLimitError as exc:
                raise TransientError("The CalDAV server asked us to slow down.") from exc
            except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError) as exc:
                raise ConnectError(
                    f"Cannot connect to {self._dav.host()}: is the address right?"
                ) from exc
            except (caldav_error.DAVError, etree.XMLSyntaxError, ValueError) as exc:
                # Any other answer means "no principal here": try the next candidate.
                logger.debug(
                    "no CalDAV principal at %s: %s", urlsplit(candidate).path, type(exc).__name__
                )
        # The URL may itself be a calendar home (or a calendar): it lists calendars directly.
        return self.url

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

    def _list_calendars(self, home: str) -> list[RemoteCalendar]:
        self._calendars = {}
        calendars = []
        with_ctag = self._wants_ctags()
        body = CALENDAR_LIST_BODY.format(ctag=CALENDAR_LIST_CTAG if with_ctag else "")
        answer = self._dav.multistatus("PROPFIND", home, body, depth="1")
        for item in answer:
            prop = item.props
            if prop is None or prop.find("d:resourcetype/c:calendar", NS) is None:
                continue
            components = [
                c.get("name") for c in prop.findall("c:supported-calendar-component-set/c:comp", NS)
            ]
            if components and "VEVENT" not in components:
                continue
            url = urljoin(home, item.href)
            report_set = prop.find("d:supported-report-set", NS)
            if report_set is None:
                supports_sync = None
            else:
                supports_sync = any(
                    etree.QName(r).localname == "sync-collection"
                    for r in report_set.iterfind(".//d:supported-report/d:report/*", NS)
                )
            ctag = _ctag_of(item) if with_ctag else None
            self._calendars[normalize_href(urlsplit(url).path)] = CalendarInfo(supports_sync, ctag)
            if len(calendars) >= MAX_CALENDARS:
                raise ProviderError(
                    f"The calendar home {urlsplit(home).path} lists more than {MAX_CALENDARS:,} "
                    "calendars; Caly syncs accounts up to that many."
                )
            calendars.append(
                RemoteCalendar(
                    remote_id=url,
                    name=(prop.findtext("d:displayname", namespaces=NS) or "").strip()
                    or unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2]),
                    color=(prop.findtext("ic:calendar-color", namespaces=NS) or "").strip()[:32],
                    timezone=vtimezone_id(
                        prop.findtext("c:calendar-timezone", namespaces=NS) or ""
                    ),
                )
            )
        if answer.truncated:
            # The calendars left out would read as removed on the server.
            raise ProviderError(
                f"The CalDAV server cut its list of calendars at {urlsplit(home).path} short "
                "(HTTP 507); no calendar was removed."
            )
        return calendars

    def _wants_ctags(self) -> bool:
        """Does a calendar sync by ctag (no sync-collection, or refused)? Its ctag then comes with
        the calendar list rather than by a PROPFIND of its own."""
        return any(
            not c.sync_token and (c.ctag or _refused_recently(c)) for c in self.cursors.values()
        )

    # --- changes -------------------------------------------------------------------------
    def changes(
        self, calendar: RemoteCalendar, *, cursor: Cursor, stored_etags: StoredEtags
    ) -> Iterator[ChangeBatch]:
        if self._calendars is None:
            self._list_calendars(self.home_url or self._find_home())
        info = self._calendars.get(normalize_href(urlsplit(calendar.remote_id).path))
        supports_sync = info.supports_sync if info is not None else None
        refused_at = cursor.sync_refused_at if _refused_recently(cursor) else None
        if supports_sync is not False and refused_at is None:
            try:
                yield from self._changes_by_sync_token(
                    calendar, cursor=cursor, stored_etags=stored_etags
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
            calendar,
            cursor=cursor,
            stored_etags=stored_etags,
            new_cursor=lambda ctag: Cursor(ctag=ctag, sync_refused_at=refused_at),
        )

    # sync-collection (RFC 6578)
    def _changes_by_sync_token(self, calendar, *, cursor, stored_etags) -> Iterator[ChangeBatch]:
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
                yield from self._fetch(
                    calendar, to_fetch, listing.deleted, Cursor(sync_token=listing.token)
                )
                return
        known = stored_etags()
        if not known:
            yield from self._initial_by_sync(calendar)
            return
        listing = self._sync_listing(url, "")
        listed = self._guard_empty(
            calendar, known, listing, state_changed=_moved(cursor.sync_token, listing.token)
        )
        yield from self._fetch_differences(
            calendar, known, listed, Cursor(sync_token=listing.token)
        )

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
                _record(listing, item, url)
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

    def _initial_by_sync(self, calendar: RemoteCalendar) -> Iterator[ChangeBatch]:
        """First sync: the objects come with the listing, parsed and stored batch by batch."""
        url = calendar.remote_id
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
                listing = self._sync_listing(url, "")
                yield from self._fetch(
                    calendar, list(listing.changed), [], Cursor(sync_token=listing.token)
                )
                return
            batch = ChangeBatch()
            for item in answer:
                if item.status == 404:
                    deleted.append(item.href)
                    _bound(len(deleted) + len(missing), url)
                elif item.status == 200 and not item.is_collection and not item.is_self:
                    if item.data is None:
                        missing.append(item.href)  # data not sent in the report: multiget it
                        _bound(len(deleted) + len(missing), url)
                    else:
                        self._add_object(batch, calendar, item)
                        if len(batch.objects) + len(batch.skipped) >= _batch_size():
                            yield batch
                            batch = ChangeBatch()
            if batch.objects or batch.skipped:
                yield batch
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
        yield from self._fetch(calendar, missing, deleted, Cursor(sync_token=answer.token))

    # servers without sync-collection: ctag, then etags
    def _changes_by_ctag(
        self, calendar, *, cursor, stored_etags, new_cursor
    ) -> Iterator[ChangeBatch]:
        url = calendar.remote_id
        info = self._calendars.get(normalize_href(urlsplit(url).path)) if self._calendars else None
        ctag = info.ctag if info is not None and info.ctag is not None else self._ctag(url)
        if ctag and ctag == cursor.ctag and not cursor.sync_token:
            yield ChangeBatch(cursor=new_cursor(ctag))
            return
        known = stored_etags()
        if not known:
            yield from self._initial_by_query(calendar, new_cursor(ctag))
            return
        listed = self._guard_empty(
            calendar, known, self._etag_listing(url), state_changed=_moved(cursor.ctag, ctag)
        )
        yield from self._fetch_differences(calendar, known, listed, new_cursor(ctag))

    def _ctag(self, url: str) -> str:
        for item in self._dav.multistatus("PROPFIND", url, CTAG_BODY, depth="0"):
            if item.props is not None and item.is_self:
                return _ctag_of(item)
        return ""

    def _etag_listing(self, url: str) -> Listing:
        """Every object's href and etag (PROPFIND Depth 1); a 507 leaves it `truncated`, and a
        PROPFIND cannot be continued."""
        listing = Listing()
        answer = self._dav.multistatus("PROPFIND", url, ETAG_LIST_BODY, depth="1")
        for item in answer:
            if item.status == 200 and not item.is_collection and not item.is_self:
                listing.changed[item.href] = item.etag
                _bound(len(listing.changed), url)
        listing.truncated = answer.truncated
        if listing.truncated:
            logger.warning(
                "%s: the server cut its listing short after %d objects",
                urlsplit(url).path,
                len(listing.changed),
            )
        return listing

    def _initial_by_query(self, calendar: RemoteCalendar, cursor: Cursor) -> Iterator[ChangeBatch]:
        """First sync without sync-collection: one calendar-query streams every event."""
        fetched: dict[str, str] = {}
        batch = ChangeBatch()
        try:
            answer = self._dav.multistatus("REPORT", calendar.remote_id, QUERY_BODY, depth="1")
        except (AuthError, TransientError):
            raise
        except ProviderError as exc:
            # Refused as too big (see _initial_by_sync): list the etags, multiget in batches.
            logger.info("%s: calendar-query failed (%s)", urlsplit(calendar.remote_id).path, exc)
            yield from self._fetch_differences(
                calendar, {}, self._etag_listing(calendar.remote_id), cursor
            )
            return
        for item in answer:
            if item.status != 200 or item.is_collection or item.data is None:
                continue
            fetched[item.href] = item.etag
            _bound(len(fetched), calendar.remote_id)
            self._add_object(batch, calendar, item)
            if len(batch.objects) + len(batch.skipped) >= _batch_size():
                yield batch
                batch = ChangeBatch()
        if not answer.truncated:
            batch.cursor = cursor
            yield batch
            return
        # The server capped the query: whatever it left out comes by etag and multiget.
        yield batch
        yield from self._fetch_differences(
            calendar, fetched, self._etag_listing(calendar.remote_id), cursor, deletes=False
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
        self, calendar, known: Mapping[str, str], listed: Listing, cursor: Cursor, *, deletes=True
    ) -> Iterator[ChangeBatch]:
        """Fetch what a full listing shows changed and delete what it no longer shows; from a
        truncated listing only fetch what it shows, and keep the cursor where it was."""
        if listed.truncated:
            to_fetch, deleted = changed_hrefs(known, listed.changed), []
        elif deletes:
            to_fetch, deleted = listing_diff(known, listed.changed)
        else:
            to_fetch, deleted = changed_hrefs(known, listed.changed), []
        yield from self._fetch(calendar, to_fetch, deleted, cursor, listing_cut=listed.truncated)

    def _fetch(
        self, calendar, hrefs: list[str], deleted: list[str], cursor: Cursor, *, listing_cut=False
    ) -> Iterator[ChangeBatch]:
        """The objects at `hrefs` in multiget batches, `deleted` with the first, `cursor` with the
        last, but only once every object came back (or is gone) from a complete listing:
        otherwise the next sync starts again from the old cursor and asks again."""
        size = _batch_size()
        chunks = [hrefs[i : i + size] for i in range(0, len(hrefs), size)] or [[]]
        complete = not listing_cut
        for number, chunk in enumerate(chunks):
            batch = ChangeBatch()
            if chunk:
                batch, not_sent = self._multiget(calendar, chunk)
                complete = complete and not not_sent
            if number == 0:
                batch.deleted_hrefs = list(deleted)
                if listing_cut:
                    path = urlsplit(calendar.remote_id).path
                    batch.skipped.append(SkippedObject(href=path, reason=LISTING_CUT))
            if number == len(chunks) - 1 and complete:
                batch.cursor = cursor
            yield batch

    def _multiget(
        self, calendar: RemoteCalendar, hrefs: list[str]
    ) -> tuple[ChangeBatch, list[str]]:
        """The objects at `hrefs`, and the hrefs the server neither sent nor called gone (404).
        What an answer leaves out is asked for again as long as each answer brings some."""
        batch = ChangeBatch()
        wanted = {normalize_href(h): h for h in hrefs}
        while wanted:
            self.checkpoint()
            body = (
                MULTIGET_HEAD
                + "".join(f"<d:href>{xml_escape(h)}</d:href>" for h in wanted.values())
                + "</c:calendar-multiget>"
            )
            came = 0
            # RFC 4791 §7.9: no Depth header on calendar-multiget.
            for item in self._dav.multistatus("REPORT", calendar.remote_id, body, depth=None):
                key = normalize_href(item.href)
                if key not in wanted:
                    continue
                if item.status == 404:
                    # Gone between listing and fetching; the next sync reports the deletion.
                    del wanted[key]
                    came += 1
                elif item.status == 200 and item.data is not None:
                    del wanted[key]
                    came += 1
                    self._add_object(batch, calendar, item)
            if not came:
                break
        for href in wanted.values():
            batch.skipped.append(SkippedObject(href=unquote(href), reason=NOT_SENT))
        if wanted:
            logger.warning(
                "%s: %d objects asked for were not sent",
                urlsplit(calendar.remote_id).path,
                len(wanted),
            )
        return batch, list(wanted.values())

    def _add_object(self, batch: ChangeBatch, calendar: RemoteCalendar, item: Item) -> None:
        try:
            events = parse_object(item.data, default_timezone=calendar.timezone)
        except MalformedObject as exc:
            batch.skipped.append(SkippedObject(href=unquote(item.href), reason=str(exc)[:300]))
            return
        batch.objects.append(
            RemoteObject(href=item.href, etag=item.etag, events=events, raw=item.data)
        )


def _batch_size() -> int:
    return max(1, settings.CALY_SYNC_BATCH_SIZE)


def _moved(old: str, new: str) -> bool | None:
    """Did the server's sync state move? None when there is nothing to compare."""
    if not old or not new:
        return None
    return old != new


def _refused_recently(cursor: Cursor) -> bool:
    refused_at = cursor.sync_refused_at
    return refused_at is not None and timezone.now() - refused_at < SYNC_REFUSAL_KEPT


def _ctag_of(item: Item) -> str:
    if item.props is None:
        return ""
    return (item.props.findtext("cs:getctag", namespaces=NS) or item.etag or "").strip()


def _bound(count: int, url: str) -> None:
    """Listings are held until complete: one of a calendar beyond any real size is refused."""
    if count > MAX_LISTED_OBJECTS:
        raise ProviderError(
            f"{urlsplit(url).path} lists more than {MAX_LISTED_OBJECTS:,} objects; Caly syncs "
            "calendars up to that size."
        )


def _record(listing: Listing, item: Item, url: str) -> None:
    if item.status == 404:
        listing.changed.pop(item.href, None)
        listing.deleted.append(item.href)
    elif item.status == 200 and not item.is_collection and not item.is_self:
        listing.changed[item.href] = item.etag
        if listing.deleted and item.href in listing.deleted:
            listing.deleted.remove(item.href)
    _bound(len(listing.changed) + len(listing.deleted), url)
