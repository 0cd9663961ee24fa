"""Google Calendar provider (API v3) on google-api-python-client and google-auth.

Requests are built from the discovery document that ships with the client library and sent
through Caly's pooled HTTP session with its timeout; access tokens are refreshed by google-auth
at CALY_GOOGLE_TOKEN_URI and reused across syncs until they expire. Every request first takes a
slot from the Google user's request budget (`sync.budget`), shared by all workers.

Per sync of an unchanged account: one calendarList.list, and one events.list per calendar (by
sync token). A full listing asks for 2,500 events a page, the most Google serves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping

import google.auth.exceptions
import google.auth.transport
import httplib2
import msgspec
import niquests
from django.conf import settings
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.model import JsonModel

from calendars.timezones import as_instant, default_end, recurrence_key, zone_named
from sync import http
from sync.backoff import backoff, retry_after_seconds
from sync.budget import BudgetExhausted, budget_spend
from sync.ical import recurrence_from_lines
from sync.providers.base import (
    AuthError,
    ChangeBatch,
    ConnectError,
    Cursor,
    Provider,
    ProviderError,
    RemoteCalendar,
    RemoteEvent,
    RemoteObject,
    SkippedObject,
    TransientError,
)

logger = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/calendar.readonly"
EVENTS_PAGE = 2500  # events.list maxResults: the largest page Google serves
CALENDARS_PAGE = 250  # calendarList.list maxResults: likewise
RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
DAILY_LIMIT_REASONS = {"dailyLimitExceeded", "quotaExceeded"}
SCOPE_REASONS = {"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}
# A throttled request is retried here, at once, when the wait is short: the rest of a long
# listing need not start over. Longer waits go back to the queue as a TransientError.
INLINE_RETRIES = 2
INLINE_BACKOFF_SECONDS = 1.0
RETRY_AFTER_SPREAD = 0.25  # requests told the same Retry-After do not all return at once
RECONNECT = "Reconnect the Google account in Caly."

UTC = dt.UTC


class SyncTokenExpired(ProviderError):
    """HTTP 410: Google no longer knows the sync token; the calendar is listed in full again."""


# --- access tokens ----------------------------------------------------------------------------
# Access tokens live an hour; keeping them per process saves a token request on every sync.
# Keyed by a digest of the refresh token, so the cache never holds a refresh token itself.
_access_tokens: dict[str, tuple[str, dt.datetime]] = {}
_access_lock = threading.Lock()


def _token_key(refresh_token: str) -> str:
    material = f"{settings.CALY_GOOGLE_CLIENT_ID}\0{refresh_token}"
    return hashlib.sha256(material.encode()).hexdigest()


class _TokenResponse(google.auth.transport.Response):
    def __init__(self, response):
        self._status = response.status_code
        self._headers = dict(response.headers)
        self._data = response.content or b""

    @property
    def status(self):
        return self._status

    @property
    def headers(self):
        return self._headers

    @property
    def data(self):
        return self._data


def _send(method: str, url: str, *, body, headers, timeout: float | None = None):
    """One request over Caly's pooled session, with its timeout; redirects are not followed."""
    return http.session().request(
        method,
        url,
        data=body,
        headers=headers,
        timeout=timeout or settings.CALY_HTTP_TIMEOUT,
        allow_redirects=False,
    )


class _TokenTransport(google.auth.transport.Request):
    """google-auth's way of reaching the token endpoint, over Caly's session with its timeout."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        try:
            response = _send(method, url, body=body, headers=headers, timeout=timeout)
        except niquests.exceptions.RequestException as exc:
            raise google.auth.exceptions.TransportError(
                f"cannot reach the token endpoint ({type(exc).__name__})"
            ) from None
        return _TokenResponse(response)


# --- the transport googleapiclient sends through ----------------------------------------------
class _Transport:
    """The `http` object googleapiclient calls: budget, bearer token, Caly's session, timeout.

    It answers like httplib2 (a `Response` with `.status`, and the body), which is all the
    client library needs; HTTP errors are left to the caller to interpret.
    """

    def __init__(self, provider: GoogleProvider):
        self._provider = provider

    def request(
        self, uri, method="GET", body=None, headers=None, redirections=None, connection_type=None
    ):
        provider = self._provider
        headers = dict(headers or {})
        # Google compresses answers only for user agents that say "gzip".
        headers["user-agent"] = f"{http.USER_AGENT} (gzip)"
        for attempt in range(2):
            provider._spend_budget()
            token = provider._access_token()
            headers["authorization"] = f"Bearer {token}"
            try:
                response = _send(method, uri, body=body, headers=headers)
            except niquests.exceptions.Timeout:
                raise TransientError(
                    f"Google Calendar did not answer within {settings.CALY_HTTP_TIMEOUT:g} s."
                ) from None
            except niquests.exceptions.RequestException as exc:
                raise TransientError(
                    f"Cannot connect to Google Calendar ({type(exc).__name__})."
                ) from None
            if response.status_code == 401 and attempt == 0:
                # Revoked or expired early: refresh once; a second 401 is the caller's to judge.
                provider._forget_token(token)
                continue
            break
        info = {name.lower(): value for name, value in response.headers.items()}
        info["status"] = str(response.status_code)
        result = httplib2.Response(info)
        result.reason = response.reason or ""
        return result, response.content or b""


# --- responses --------------------------------------------------------------------------------
# Answers are parsed by msgspec into the few fields Caly reads. A page of events keeps each
# event as the exact JSON text Google sent (msgspec.Raw), which becomes the event's stored
# source without re-encoding, and is decoded one event at a time, so one unreadable event is
# skipped on its own.
class _BytesModel(JsonModel):
    """googleapiclient's JSON model (alt=json, the same headers), handing over the body as is."""

    def deserialize(self, content):
        return content


class _CalendarEntry(msgspec.Struct, rename="camel"):
    id: str = ""
    summary: str = ""
    summary_override: str = ""
    background_color: str = ""
    time_zone: str = ""
    primary: bool = False
    deleted: bool = False


class _CalendarPage(msgspec.Struct, rename="camel"):
    items: list[_CalendarEntry] = []
    next_page_token: str = ""


class _EventPage(msgspec.Struct, rename="camel"):
    items: list[msgspec.Raw] = []
    next_page_token: str = ""
    next_sync_token: str = ""


class _Time(msgspec.Struct, rename="camel"):
    """A start, end or originalStartTime: `date` for all-day events, else `dateTime`."""

    date: dt.date | None = None
    date_time: dt.datetime | None = None
    time_zone: str = ""


class GoogleEvent(msgspec.Struct, rename="camel"):
    """The fields of a Google event resource Caly reads; the rest stays in its stored JSON."""

    id: str = ""
    etag: str = ""
    status: str = ""
    ical_uid: str = msgspec.field(default="", name="iCalUID")
    recurring_event_id: str = ""
    summary: str = ""
    description: str = ""
    location: str = ""
    start: _Time | None = None
    end: _Time | None = None
    original_start_time: _Time | None = None
    recurrence: list[str] = []
    updated: str = ""


class _Identified(msgspec.Struct):
    id: str = ""


_calendar_pages = msgspec.json.Decoder(_CalendarPage)
_event_pages = msgspec.json.Decoder(_EventPage)
_events = msgspec.json.Decoder(GoogleEvent)
_identified = msgspec.json.Decoder(_Identified)


def decode_event(text: bytes | str | msgspec.Raw) -> GoogleEvent:
    """One event resource as JSON text; raises ValueError (msgspec's) if it is not one."""
    return _events.decode(text)


def _id_of(raw: msgspec.Raw) -> str:
    """The id of an event that did not decode, if it has a readable one."""
    try:
        return _identified.decode(raw).id
    except msgspec.DecodeError:
        return ""


# --- the provider -----------------------------------------------------------------------------
class GoogleProvider(Provider):
    """One Google account. `credentials` holds the OAuth refresh token; `username` its address."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._credentials: Credentials | None = None
        self._service = None
        self._token_lock = threading.Lock()
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
            self._service = build(
                "calendar",
                "v3",
                static_discovery=True,
                cache_discovery=False,
                http=_Transport(self),
                model=_BytesModel(),
                client_options=options,
            )
        return self._service

    def close(self) -> None:
        # The HTTP session is shared; only forget the client and its per-sync lookups.
        self._service = None
        self._master_uids.clear()

    def _budget_key(self) -> str:
        # Google counts requests per user: the account's address once known (several Caly
        # accounts may be the same Google user), else the grant itself.
        if self.username:
            return f"google:{self.username.lower()}"
        return "google:grant:" + _token_key(self.refresh_token)[:32]

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

    def _access_token(self) -> str:
        with self._token_lock:
            if self._credentials is None:
                self._credentials = Credentials(
                    token=None,
                    refresh_token=self.refresh_token,
                    token_uri=settings.CALY_GOOGLE_TOKEN_URI,
                    client_id=settings.CALY_GOOGLE_CLIENT_ID,
                    client_secret=settings.CALY_GOOGLE_CLIENT_SECRET,
                )
            credentials = self._credentials
            if credentials.valid:
                return credentials.token
            key = _token_key(self.refresh_token)
            with _access_lock:
                cached = _access_tokens.get(key)
            if cached is not None:
                credentials.token, credentials.expiry = cached
                if credentials.valid:
                    return credentials.token
            self._refresh(credentials)
            with _access_lock:
                _access_tokens[key] = (credentials.token, credentials.expiry)
            return credentials.token

    def _refresh(self, credentials: Credentials) -> None:
        try:
            credentials.refresh(_TokenTransport())
        except google.auth.exceptions.RefreshError as exc:
            raise _refresh_failure(exc) from None
        except google.auth.exceptions.TransportError:
            raise TransientError("Cannot reach Google's token endpoint.") from None

    def _forget_token(self, token: str) -> None:
        with _access_lock:
            key = _token_key(self.refresh_token)
            if _access_tokens.get(key, ("",))[0] == token:
                del _access_tokens[key]
        with self._token_lock:
            if self._credentials is not None and self._credentials.token == token:
                self._credentials.token = None

    def _execute(self, request, *, what: str, decoder: msgspec.json.Decoder):
        """Run one API request and decode its answer with `decoder`; failures become Caly's
        error kinds (see `_failure`)."""
        for attempt in range(INLINE_RETRIES + 1):
            try:
                content = request.execute()
            except HttpError as exc:
                failure = _failure(exc, what=what)
            else:
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

    # --- discovery --------------------------------------------------------------------------
    def discover(self) -> list[RemoteCalendar]:
        calendars = []
        page_token = None
        while True:
            page = self._execute(
                self.service.calendarList().list(maxResults=CALENDARS_PAGE, pageToken=page_token),
                what="the calendar list",
                decoder=_calendar_pages,
            )
            for entry in page.items:
                if entry.deleted or not entry.id:
                    continue
                if entry.primary:
                    self.username = entry.id
                calendars.append(
                    RemoteCalendar(
                        remote_id=entry.id,
                        name=(entry.summary_override or entry.summary)[:500] or entry.id,
                        color=entry.background_color[:32],
                        timezone=entry.time_zone,
                    )
                )
            page_token = page.next_page_token
            if not page_token:
                return calendars

    # --- changes ----------------------------------------------------------------------------
    def changes(
        self, calendar: RemoteCalendar, *, cursor: Cursor, known: Mapping[str, str]
    ) -> Iterator[ChangeBatch]:
        if cursor.sync_token:
            try:
                yield from self._listing(calendar, sync_token=cursor.sync_token, known=known)
                return
            except SyncTokenExpired:
                logger.info(
                    "sync token of Google calendar %s expired; listing it in full",
                    calendar.remote_id,
                )
        yield from self._listing(calendar, sync_token="", known=known)

    def _listing(
        self, calendar: RemoteCalendar, *, sync_token: str, known: Mapping[str, str]
    ) -> Iterator[ChangeBatch]:
        """Every page of events.list, one batch each; the last batch carries nextSyncToken.

        With a sync token Google sends only what changed (deletions as cancelled events); without
        one it lists everything, and stored events it did not list are gone.
        """
        full = not sync_token
        listed: set[str] = set()
        instances = _InstanceIndex(known)
        page_token = None
        while True:
            request = self.service.events().list(
                calendarId=calendar.remote_id,
                maxResults=EVENTS_PAGE,
                pageToken=page_token,
                syncToken=sync_token or None,
            )
            try:
                page = self._execute(request, what=self._events_of(calendar), decoder=_event_pages)
            except SyncTokenExpired:
                if full:  # a page token outlived its listing: start again later
                    raise TransientError(
                        "Google ended a full listing with HTTP 410; it starts again."
                    ) from None
                raise
            batch = self._batch(calendar, page.items, known, listed, instances)
            page_token = page.next_page_token
            if page_token:
                yield batch
                continue
            if full:
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
            decoder=_event_pages,
        )
        if again.items:
            raise TransientError(
                f"Google listed no events in {calendar.name or 'a calendar'}, then some; "
                "nothing was deleted, the sync is tried again."
            )

    def _batch(self, calendar, items, known, listed, instances) -> ChangeBatch:
        batch = ChangeBatch()
        for raw in items:
            try:
                item = _events.decode(raw)
            except msgspec.DecodeError as exc:
                href = _id_of(raw)
                if href:
                    listed.add(href)
                    reason = f"unreadable Google event: {exc}"
                    batch.skipped.append(SkippedObject(href=href, reason=reason[:300]))
                continue
            href = item.id
            if not href:
                continue
            listed.add(href)
            etag = item.etag
            if etag and known.get(href) == etag:
                continue  # unchanged since it was stored
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
                    decoder=_events,
                )
            except (_NotFound, SyncTokenExpired):
                master = None
            alive = master is not None and master.status != "cancelled"
            self._master_uids[master_id] = (master.ical_uid or None) if alive else None
        return self._master_uids[master_id]


class _NotFound(ProviderError):
    """HTTP 404/410 on a single resource."""


class _InstanceIndex:
    """Stored hrefs of exceptions by their series: Google names them `<series id>_<start>`."""

    def __init__(self, known: Mapping[str, str]):
        self._known = known
        self._index: dict[str, set[str]] | None = None

    def _build(self) -> dict[str, set[str]]:
        if self._index is None:
            self._index = defaultdict(set)
            for href in self._known:
                series, sep, _ = href.rpartition("_")
                if sep:
                    self._index[series].add(href)
        return self._index

    def add(self, master_id: str, href: str) -> None:
        self._build()[master_id].add(href)

    def of(self, master_id: str) -> list[str]:
        return sorted(self._build().get(master_id, ()))


# --- errors -----------------------------------------------------------------------------------
def _error_reason(exc: HttpError) -> str:
    try:
        error = json.loads(exc.content.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return ""
    if not isinstance(error, dict):
        return ""
    for detail in error.get("errors") or error.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            return str(detail["reason"])
    return str(error.get("status") or "")


def _failure(exc: HttpError, *, what: str) -> ProviderError:
    """An HTTP error from the Calendar API as one of Caly's error kinds (never with the URL)."""
    status = exc.resp.status
    reason = _error_reason(exc)
    retry_after = retry_after_seconds(exc.resp.get("retry-after"))
    label = f"HTTP {status}" + (f" {reason}" if reason else "")
    if status == 410 and reason in ("fullSyncRequired", "updatedMinTooLongAgo", "ABORTED", ""):
        return SyncTokenExpired(f"Google asked for a full sync of {what} ({label}).")
    if status == 429 or status >= 500 or (status == 403 and reason in RATE_LIMIT_REASONS):
        return TransientError(
            f"Google Calendar asked Caly to slow down or was unavailable while reading {what} "
            f"({label}).",
            retry_after=retry_after,
        )
    if status == 403 and reason in DAILY_LIMIT_REASONS:
        return TransientError(
            f"Google Calendar's daily quota is used up ({label}).",
            retry_after=retry_after or 3600,
        )
    if status == 401:
        return AuthError(f"Google refused Caly's access to this account ({label}). {RECONNECT}")
    if status == 403 and reason in SCOPE_REASONS:
        return AuthError(f"The Google account did not allow Caly to read calendars. {RECONNECT}")
    if status in (404, 410):
        return _NotFound(f"Google Calendar could not find {what} ({label}).")
    return ProviderError(f"Google Calendar refused to list {what} ({label}).")


def _refresh_failure(exc: google.auth.exceptions.RefreshError) -> ProviderError:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error = str(data.get("error") or "")
    if not error and exc.args:
        error = str(exc.args[0]).partition(":")[0].strip()
    if error == "invalid_grant":
        return AuthError(
            "Google no longer accepts Caly's authorisation for this account (invalid_grant: it "
            f"was revoked or has expired). {RECONNECT}"
        )
    if error in ("invalid_client", "unauthorized_client"):
        return ProviderError(
            f"Google refused Caly's OAuth client ({error}): check CALY_GOOGLE_CLIENT_ID and "
            "CALY_GOOGLE_CLIENT_SECRET."
        )
    if getattr(exc, "retryable", False):
        return TransientError("Google's token endpoint is unavailable.")
    return ProviderError(f"Google refused to renew the access token ({error or 'unknown error'}).")


# --- Google event → RemoteEvent ---------------------------------------------------------------
# Google's events are JSON; zones, instants, all-day ends and the recurrence lines are read with
# the helpers the iCalendar mapping uses (`calendars.timezones`, `sync.ical`).
def _moment(value: _Time, *, zone: dt.tzinfo) -> dt.date | dt.datetime:
    """A Google start/end/originalStartTime: a date (all-day) or an aware date-time."""
    if value.date is not None:
        return value.date
    moment = value.date_time
    if moment is None:
        raise ValueError("a time with neither date nor dateTime")
    if moment.tzinfo is None:  # RFC 3339 requires an offset; be lenient like Google's clients
        moment = moment.replace(tzinfo=zone_named(value.time_zone) if value.time_zone else zone)
    return moment


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return None


def event_from_google(item: GoogleEvent, *, uid: str, calendar_timezone: str = "") -> RemoteEvent:
    """One Google event resource in Caly's provider-neutral form.

    An exception's recurrence_id is its originalStartTime in the form CalDAV's RECURRENCE-ID
    takes (`calendars.timezones.recurrence_key`), so the same meeting matches across providers.
    A cancelled occurrence of a recurring event stays a row with status CANCELLED.
    """
    start_field = item.start or item.original_start_time
    if start_field is None:
        raise ValueError("an event with no start")
    zone_name = start_field.time_zone or calendar_timezone
    zone = zone_named(zone_name)
    recurrence_id = ""
    if item.recurring_event_id and item.original_start_time:
        recurrence_id = recurrence_key(_moment(item.original_start_time, zone=zone))
    start_value = _moment(start_field, zone=zone)
    all_day = type(start_value) is dt.date
    start = as_instant(start_value)
    if item.end is not None:
        end = as_instant(_moment(item.end, zone=zone))
    else:
        # A cancelled occurrence carries only its originalStartTime: it has no length.
        end = default_end(start, all_day=all_day and item.start is not None)
    rrule, rdate, exdate = "", (), ()
    if item.recurrence:
        rrule, rdate, exdate = recurrence_from_lines(item.recurrence, default_zone=zone)
    return RemoteEvent(
        uid=uid,
        recurrence_id=recurrence_id,
        summary=item.summary,
        description=item.description,
        location=item.location,
        start=start,
        end=end,
        all_day=all_day,
        timezone="" if all_day else zone_name,
        status=(item.status or "confirmed").upper(),
        rrule=rrule,
        rdate=rdate,
        exdate=exdate,
        last_modified=_parse_time(item.updated),
    )
