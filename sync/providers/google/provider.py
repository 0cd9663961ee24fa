"""Google Calendar provider (API v3) on google-api-python-client and google-auth.

Requests are built from the discovery document that ships with the client library and sent,
as its documentation shows, through google-auth-httplib2's AuthorizedHttp (bearer token, refresh
at CALY_GOOGLE_TOKEN_URI) onto one adapter to Caly's pooled HTTP session (`transport.Http`).
Access tokens are reused across syncs until they expire. Every API request first takes a slot
from the Google user's request budget (`sync.budget`), shared by all workers.

Per sync of an unchanged account: one calendarList.list, and one events.list per calendar (by
sync token). A full listing asks for 2,500 events a page, the most Google serves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

import google.auth.exceptions
import msgspec
from django.conf import settings
from google.oauth2.credentials import Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from sync.backoff import backoff
from sync.budget import BudgetExhausted, budget_spend
from sync.engine import changed_hrefs
from sync.providers.base import (
    AuthError,
    ConnectError,
    Provider,
    ProviderError,
    StoredEtags,
    TimedOut,
    TransientError,
)
from sync.providers.google import push, writing
from sync.providers.google.errors import (
    RECONNECT,
    NotFound,
    SyncTokenExpired,
    provider_error,
    refresh_failure,
)
from sync.providers.google.events import (
    calendar_pages,
    event_from_google,
    event_pages,
    events_decoder,
    id_of,
)
from sync.providers.google.transport import BytesModel, Http
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
# A throttled request is retried here, at once, when the wait is short: the rest of a long
# listing need not start over. Longer waits go back to the queue as a TransientError.
INLINE_RETRIES = 2
INLINE_BACKOFF_SECONDS = 1.0
RETRY_AFTER_SPREAD = 0.25  # requests told the same Retry-After do not all return at once

UTC = dt.UTC


# --- access tokens ----------------------------------------------------------------------------
# Access tokens live an hour; keeping them per process saves a token request on every sync.
# Keyed by a digest of the refresh token, so the cache never holds a refresh token itself.
_access_tokens: dict[str, tuple[str, dt.datetime | None]] = {}


def token_key(refresh_token: str) -> str:
    material = f"{settings.CALY_GOOGLE_CLIENT_ID}\0{refresh_token}"
    return hashlib.sha256(material.encode()).hexdigest()


# The address Google itself gave for each grant (the id of its primary calendar), by token_key:
# what the user's request budget is keyed on. Never the account's username, which its owner
# types and edits, and which may name somebody else.
_verified_addresses: dict[str, str] = {}


class GoogleProvider(Provider):
    """One Google account. `credentials` holds the OAuth refresh token; `username` its address."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._credentials: Credentials | None = None
        self._service = None
        self._master_uids: dict[str, str | None] = {}

    # --- plumbing ---------------------------------------------------------------------------
    @property
    def refresh_token(self) -> str:
        return str(self.credentials.get("refresh_token") or "")

    def _check_configured(self) -> None:
        if not (settings.CALY_GOOGLE_CLIENT_ID and settings.CALY_GOOGLE_CLIENT_SECRET):
            raise ConnectError(
                "Google Calendar is not set up on this Caly: set CALY_GOOGLE_CLIENT_ID and "
                "CALY_GOOGLE_CLIENT_SECRET."
            )
        if not self.refresh_token:
            raise AuthError(f"The Google account has no stored authorisation. {RECONNECT}")

    @property
    def service(self):
        if self._service is None:
            self._check_configured()
            options = {}
            if settings.CALY_GOOGLE_API_ENDPOINT:
                base = settings.CALY_GOOGLE_API_ENDPOINT.rstrip("/")
                options["api_endpoint"] = f"{base}/calendar/v3/"
            token, expiry = _access_tokens.get(token_key(self.refresh_token), (None, None))
            self._credentials = Credentials(
                token=token,
                expiry=expiry,
                refresh_token=self.refresh_token,
                token_uri=settings.CALY_GOOGLE_TOKEN_URI,
                client_id=settings.CALY_GOOGLE_CLIENT_ID,
                client_secret=settings.CALY_GOOGLE_CLIENT_SECRET,
            )
            # On a 401 AuthorizedHttp refreshes the token once and repeats the request.
            authorized = AuthorizedHttp(
                self._credentials,
                http=Http(spend_budget=self._spend_budget),
                max_refresh_attempts=1,
            )
            self._service = build(
                "calendar",
                "v3",
                static_discovery=True,
                cache_discovery=False,
                http=authorized,
                model=BytesModel(),
                client_options=options,
            )
        return self._service

    def close(self) -> None:
        # The HTTP session is shared; only forget the client and its per-sync lookups.
        self._service = None
        self._master_uids.clear()

    def _budget_key(self) -> str:
        # Google counts requests per user: the address Google gave for this grant once it has
        # (several Caly accounts may be the same Google user), else the grant itself.
        grant = token_key(self.refresh_token)
        address = _verified_addresses.get(grant)
        if address:
            return f"google:{address.lower()}"
        return "google:grant:" + grant[:32]

    def _spend_budget(self) -> None:
        try:
            wait = budget_spend(
                key=self._budget_key(),
                requests=settings.CALY_GOOGLE_USER_REQUESTS,
                window=settings.CALY_GOOGLE_USER_WINDOW_SECONDS,
                max_wait=settings.CALY_GOOGLE_MAX_WAIT_SECONDS,
            )
        except BudgetExhausted as exc:
            raise TransientError(
                "This Google user's request budget is used up for now; "
                f"continuing in {exc.wait:.0f} s.",
                retry_after=exc.wait,
            ) from None
        if wait > 0:
            time.sleep(wait)

    def _execute(
        self, request, *, what: str, decoder: msgspec.json.Decoder | None, action: str = "list"
    ):
        """Run one API request and decode its answer with `decoder` (None: no answer to read);
        failures become Caly's error kinds (see `errors.provider_error`)."""
        key = token_key(self.refresh_token)
        for attempt in range(INLINE_RETRIES + 1):
            try:
                content = request.execute()
            except google.auth.exceptions.RefreshError as exc:
                _access_tokens.pop(key, None)
                raise refresh_failure(exc) from None
            except HttpError as exc:
                failure = provider_error(exc, what=what, action=action)
            else:
                failure = None
            # The access token the request went with (refreshed, perhaps) serves the next sync.
            _access_tokens[key] = (self._credentials.token, self._credentials.expiry)
            if failure is None and decoder is None:
                return None
            if failure is None:
                try:
                    return decoder.decode(content)
                except msgspec.DecodeError as exc:
                    raise ProviderError(
                        f"Google Calendar sent an answer Caly cannot read for {what} ({exc})."
                    ) from None
            if not isinstance(failure, TransientError):
                raise failure
            wait = backoff(
                attempt=attempt,
                base=INLINE_BACKOFF_SECONDS,
                retry_after=failure.retry_after,
                spread=RETRY_AFTER_SPREAD,
            )
            if attempt == INLINE_RETRIES or wait > settings.CALY_GOOGLE_MAX_WAIT_SECONDS:
                raise failure
            logger.info("%s; retrying in %.1f s", failure, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    # --- writing back (writing.py) and push (push.py) ------------------------------------------
    supports_push = True

    @classmethod
    def encode_write(cls, change: LocalChange) -> OutgoingWrite:
        return writing.encode_write(change)

    def write(self, write: OutgoingWrite, *, calendar_id: str, etag: str) -> RemoteObject | None:
        return writing.send_write(
            self._execute, self.service, write, calendar_id=calendar_id, etag=etag
        )

    def watch(self, calendar_id: str, **channel) -> tuple[str, dt.datetime]:
        return push.watch(self._execute, self.service, calendar_id, **channel)

    def unwatch(self, *, channel_id: str, resource_id: str) -> None:
        push.unwatch(self._execute, self.service, channel_id=channel_id, resource_id=resource_id)

    # --- discovery --------------------------------------------------------------------------
    def discover(self) -> list[RemoteCalendar]:
        calendars = []
        page_token = None
        while True:
            page = self._execute(
                self.service.calendarList().list(maxResults=CALENDARS_PAGE, pageToken=page_token),
                what="the calendar list",
                decoder=calendar_pages,
            )
            for entry in page.items:
                if entry.deleted or not entry.id:
                    continue
                if entry.primary:
                    self.username = entry.id
                    _verified_addresses[token_key(self.refresh_token)] = entry.id
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
            request = self.service.events().list(
                calendarId=calendar.remote_id,
                maxResults=pages.size,
                pageToken=page_token,
                syncToken=sync_token or None,
            )
            try:
                page = self._execute(request, what=self._events_of(calendar), decoder=event_pages)
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
        again = self._execute(
            self.service.events().list(calendarId=calendar.remote_id, maxResults=1),
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
                master = self._execute(
                    self.service.events().get(calendarId=calendar.remote_id, eventId=master_id),
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
