"""A local Google Calendar API v3 and OAuth 2.0 server on a free loopback port, over real HTTP.

What it implements behaves as Google documents it: calendarList.list and events.list with real
paging, sync tokens that expire (HTTP 410 fullSyncRequired), cancelled events after deletion,
recurring masters and their exceptions (recurringEventId + originalStartTime), events.get,
events.insert / events.patch / events.delete (If-Match preconditions, 409 duplicate ids, 410 for
what is already deleted, instance ids of recurring events), calendar access roles (writes need
writer or owner), OAuth scopes per grant (403 insufficientPermissions), a token endpoint
(refresh, authorization code with PKCE, invalid_grant) and the consent redirect.
Requests are routed with the discovery document that ships with google-api-python-client, so a
request the real API would not recognise fails here too; parameters this fake does not implement
are refused loudly instead of being ignored.

Tests inject faults per user (403 rate limits, 429 with Retry-After, 5xx, slow answers), set a
per-user quota (a sliding window, as Google counts per user per minute), and read back every
request the client sent.

Push notifications as Google documents them: events.watch opens a web_hook channel on a calendar
(answered with its resourceId, the same for every channel on that calendar, and its expiration:
a week unless params.ttl or expiration ask for less, a month at most), which at once receives its
`sync` message; from then on every change to an event of that calendar, whichever way it is made
(the test helpers or the API's writes, everything `_store` stores), POSTs an empty `exists`
message with Google's X-Goog-* headers to each live channel of the calendar, from background
threads, never holding the fake's lock (changes made while one is still waiting to go out share
it, as Google batches them). channels.stop ends a channel (204; 404 for one unknown, ended or of
another resource). Tests read what was sent (`notifications`, `wait_for_notifications`,
`wait_push_idle`), the channels (`channels`) and end one early (`expire_channel`).
"""

from __future__ import annotations

import base64
import bisect
import collections
import copy
import datetime as dt
import email.utils
import hashlib
import http.client
import ipaddress
import itertools
import json
import queue
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import googleapiclient
from dateutil.rrule import rrulestr

from tests.support.ports import free_port

DISCOVERY_DOCUMENT = (
    Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "calendar.v3.json"
)
API_PREFIX = "/calendar/v3/"
TOKEN_PATH = "/token"
AUTH_PATH = "/o/oauth2/v2/auth"
STATS_PATH = "/_fake/stats"
MAX_EVENTS_PAGE = 2500
MAX_CALENDAR_LIST_PAGE = 250
# Parameters of events.list that cannot be combined with a sync token (Google answers 400).
NOT_WITH_SYNC_TOKEN = {
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
}
# What this fake implements per method; anything else the discovery document allows is refused
# with a 400 naming it, so a client relying on unimplemented behaviour notices.
IMPLEMENTED = {
    "calendar.calendarList.list": {"maxResults", "pageToken", "showDeleted", "showHidden"},
    "calendar.events.list": {
        "calendarId",
        "maxResults",
        "pageToken",
        "syncToken",
        "showDeleted",
        "singleEvents",
    },
    "calendar.events.get": {"calendarId", "eventId"},
    # sendUpdates/sendNotifications only decide whom Google emails: nothing to do here.
    "calendar.events.insert": {
        "calendarId",
        "conferenceDataVersion",
        "sendNotifications",
        "sendUpdates",
        "supportsAttachments",
    },
    "calendar.events.patch": {
        "calendarId",
        "conferenceDataVersion",
        "eventId",
        "sendNotifications",
        "sendUpdates",
        "supportsAttachments",
    },
    "calendar.events.delete": {"calendarId", "eventId", "sendNotifications", "sendUpdates"},
    # The discovery document lets events.watch take events.list's parameters; which events a
    # channel is told about is not filtered here (eventTypes, q, ...): all of them are refused.
    "calendar.events.watch": {"calendarId"},
    "calendar.channels.stop": set(),
}
GLOBAL_IGNORED = {"alt", "prettyPrint", "quotaUser", "userIp", "key"}

# --- OAuth scopes -----------------------------------------------------------------------------
SCOPE_CALENDAR = "https://www.googleapis.com/auth/calendar"
SCOPE_READONLY = "https://www.googleapis.com/auth/calendar.readonly"
SCOPE_EVENTS = "https://www.googleapis.com/auth/calendar.events"
SCOPE_EVENTS_READONLY = "https://www.googleapis.com/auth/calendar.events.readonly"
# What a grant made by add_user/new_refresh_token carries unless told otherwise: reading and
# writing events.
DEFAULT_SCOPE = f"{SCOPE_EVENTS} {SCOPE_READONLY}"
# Scopes whose meaning this fake models. A request the token allows only through another scope
# the discovery document lists for the method (calendar.app.created, calendar.events.owned,
# calendar.events.freebusy, ...) is refused loudly: which calendars those reach is not modelled.
MODELLED_SCOPES = {
    SCOPE_CALENDAR,
    SCOPE_READONLY,
    SCOPE_EVENTS,
    SCOPE_EVENTS_READONLY,
    "https://www.googleapis.com/auth/calendar.calendarlist",
    "https://www.googleapis.com/auth/calendar.calendarlist.readonly",
}

# --- calendar access roles --------------------------------------------------------------------
ACCESS_ROLES = ("freeBusyReader", "reader", "writer", "owner")
WRITE_ROLES = {"writer", "owner"}

# --- event resources ----------------------------------------------------------------------------
# An event id a client chooses: base32hex (RFC 2938 3.1.2), 5 to 1024 characters.
EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
# Read-only in the Event schema (or set by Google): ignored in request bodies, as Google does.
IGNORED_EVENT_FIELDS = {
    "kind",
    "etag",
    "htmlLink",
    "hangoutLink",
    "created",
    "updated",
    "creator",
    "organizer",
    "locked",
    "attendeesOmitted",
}
# Fields of the Event schema whose behaviour this fake does not model: refused with a 400.
UNMODELLED_EVENT_FIELDS = {
    "birthdayProperties",
    "focusTimeProperties",
    "outOfOfficeProperties",
    "workingLocationProperties",
    "gadget",
}
STRING_FIELDS = {"summary", "description", "location", "colorId", "iCalUID"}
ENUM_FIELDS = {
    "status": {"confirmed", "tentative", "cancelled"},
    "transparency": {"opaque", "transparent"},
    "visibility": {"default", "public", "private", "confidential"},
}
RECURRENCE_LINE = re.compile(r"(RRULE|EXRULE|RDATE|EXDATE)[;:]", re.IGNORECASE)

# --- push notification channels ---------------------------------------------------------------
CHANNEL_ID = re.compile(r"[A-Za-z0-9\-_+/=]+")
CHANNEL_ID_MAX = 64
CHANNEL_TOKEN_MAX = 256
CHANNEL_TYPES = {"web_hook", "webhook"}  # the discovery document: both mean an HTTP callback
CHANNEL_FIELDS = {
    "address",
    "expiration",
    "id",
    "kind",
    "params",
    "payload",
    "resourceId",
    "resourceUri",
    "token",
    "type",
}
CHANNEL_DEFAULT_SECONDS = 7 * 86400  # without params.ttl or expiration: a week
CHANNEL_MAX_SECONDS = 30 * 86400  # Google caps events channels at about a month
PUSH_TIMEOUT = 2.0  # seconds for each notification's POST
PUSH_WORKERS = 4
PUSH_USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"


# --- the discovery document as a router -------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method_id: str
    http_method: str
    pattern: re.Pattern
    parameters: frozenset[str]
    literal_length: int
    scopes: frozenset[str] = frozenset()


def _template_regex(path: str) -> tuple[re.Pattern, int]:
    regex, literal, pos = "", 0, 0
    for match in re.finditer(r"\{(\+?)([^}]+)\}", path):
        chunk = path[pos : match.start()]
        regex += re.escape(chunk)
        literal += len(chunk)
        regex += f"(?P<{match.group(2)}>{'.+' if match.group(1) else '[^/]+'})"
        pos = match.end()
    regex += re.escape(path[pos:])
    literal += len(path) - pos
    return re.compile("^" + regex + "$"), literal


def _methods(resources: dict):
    for resource in resources.values():
        yield from resource.get("methods", {}).values()
        yield from _methods(resource.get("resources", {}))


def load_discovery() -> dict:
    return json.loads(DISCOVERY_DOCUMENT.read_text())


def discovery_routes(document: dict | None = None) -> tuple[list[Route], frozenset[str]]:
    """Every method of the document as a route (most literal first), and the global parameters."""
    document = document or load_discovery()
    service_path = "/" + document["servicePath"].lstrip("/")
    routes = []
    for method in _methods(document["resources"]):
        pattern, literal = _template_regex(service_path + method["path"])
        routes.append(
            Route(
                method_id=method["id"],
                http_method=method["httpMethod"],
                pattern=pattern,
                parameters=frozenset(method.get("parameters", {})),
                literal_length=literal,
                scopes=frozenset(method.get("scopes", ())),
            )
        )
    routes.sort(key=lambda r: -r.literal_length)
    return routes, frozenset(document.get("parameters", {}))


# --- what the fake holds --------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def _unb64(text: str) -> dict | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _time_field(value: str, time_zone: str | None) -> dict:
    """`2026-01-05` → an all-day {"date"}; anything longer → {"dateTime"} (with its timeZone)."""
    if len(value) == 10:
        return {"date": value}
    result = {"dateTime": value}
    if time_zone:
        result["timeZone"] = time_zone
    return result


def instance_suffix(original_start: str) -> str:
    """Google's instance id suffix: the original start in UTC basic format, or the bare date."""
    if len(original_start) == 10:
        return original_start.replace("-", "")
    instant = dt.datetime.fromisoformat(original_start).astimezone(dt.UTC)
    return instant.strftime("%Y%m%dT%H%M%SZ")


@dataclass
class StoredEvent:
    resource: dict
    seq: int
    body: bytes  # the resource as served, serialised once
    # A deleted event is served as a bare tombstone; Google keeps its details on the organizer's
    # calendar so that it can be restored (a patch setting its status back): they are kept here.
    before_deletion: dict | None = None

    @property
    def cancelled(self) -> bool:
        return self.resource.get("status") == "cancelled"

    @property
    def instance(self) -> bool:
        return "recurringEventId" in self.resource


@dataclass
class FakeCalendar:
    id: str
    summary: str
    time_zone: str = "UTC"
    color: str = "#9fe1e7"
    primary: bool = False
    access_role: str = "owner"  # owner, writer, reader or freeBusyReader
    events: dict[str, StoredEvent] = field(default_factory=dict)
    # Sync tokens carry the epoch they were issued in; expiring tokens moves to a new epoch.
    token_epoch: int = 0
    _sorted_ids: list[str] | None = None
    # iCalUID → id of the (non-instance) event carrying it, deleted ones included: events.insert
    # answers 409 for a UID the calendar already holds. Checked against the event on lookup.
    _uids: dict[str, str] = field(default_factory=dict)
    # What events.watch answers as resourceId: opaque, the same for every channel on this
    # calendar. `channels`: ids of the channels opened on it (the ended ones leave it).
    resource_id: str = field(default_factory=lambda: secrets.token_urlsafe(20)[:27])
    channels: list[str] = field(default_factory=list)

    def sorted_ids(self) -> list[str]:
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self.events)
        return self._sorted_ids

    def entry(self) -> dict:
        entry = {
            "kind": "calendar#calendarListEntry",
            "etag": f'"{hashlib.sha1(self.id.encode()).hexdigest()[:16]}"',
            "id": self.id,
            "summary": self.summary,
            "timeZone": self.time_zone,
            "colorId": "14",
            "backgroundColor": self.color,
            "foregroundColor": "#000000",
            "selected": True,
            "accessRole": self.access_role,
            "defaultReminders": [],
            "conferenceProperties": {"allowedConferenceSolutionTypes": ["hangoutsMeet"]},
        }
        if self.primary:
            entry["primary"] = True
        return entry


@dataclass
class FakeUser:
    email: str
    refresh_token: str
    calendars: dict[str, FakeCalendar] = field(default_factory=dict)
    revoked: bool = False
    quota: tuple[int, float] | None = None  # (requests, window seconds)
    page_size: int | None = None  # serve smaller pages than asked for (Google may)
    served: collections.deque = field(default_factory=collections.deque)
    max_in_window: int = 0
    quota_rejections: int = 0

    @property
    def primary(self) -> str:
        return self.email


@dataclass
class FakeChannel:
    """A push notification channel (events.watch). `expiration` is in ms since the epoch;
    `messages` the number of the last message sent on it (the sync message is number 1)."""

    id: str
    user: str  # the email of the user who opened it
    calendar_id: str
    address: str
    token: str | None
    resource_id: str
    resource_uri: str
    expiration: int
    params: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    stopped: bool = False
    messages: int = 0
    calendar: FakeCalendar | None = field(default=None, repr=False, compare=False)

    @property
    def expired(self) -> bool:
        return self.expiration <= time.time() * 1000

    @property
    def live(self) -> bool:
        return not self.stopped and not self.expired

    def info(self) -> dict:
        """What `FakeGoogle.channels` lists of it."""
        return {
            "id": self.id,
            "user": self.user,
            "calendar_id": self.calendar_id,
            "address": self.address,
            "token": self.token,
            "resource_id": self.resource_id,
            "resource_uri": self.resource_uri,
            "expiration": self.expiration,
            "params": dict(self.params),
            "created": self.created,
            "stopped": self.stopped,
            "expired": self.expired,
            "messages": self.messages,
        }

    def resource(self) -> dict:
        """The Channel resource events.watch answers with."""
        answer = {
            "kind": "api#channel",
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": self.resource_uri,
        }
        if self.token:
            answer["token"] = self.token
        answer["expiration"] = str(self.expiration)
        return answer

    def headers(self, state: str, number: int) -> dict[str, str]:
        """What Google sends with a notification (its body is empty)."""
        headers = {
            "Content-Type": "application/json; utf-8",
            "Content-Length": "0",
            "User-Agent": PUSH_USER_AGENT,
            "X-Goog-Channel-ID": self.id,
        }
        if self.token:
            headers["X-Goog-Channel-Token"] = self.token
        headers["X-Goog-Channel-Expiration"] = email.utils.formatdate(
            self.expiration / 1000, usegmt=True
        )
        headers["X-Goog-Resource-ID"] = self.resource_id
        headers["X-Goog-Resource-URI"] = self.resource_uri
        headers["X-Goog-Resource-State"] = state
        headers["X-Goog-Message-Number"] = str(number)
        return headers


@dataclass
class PushNotification:
    """One notification POSTed to a channel's address: `status` is the receiver's HTTP status,
    None if there was none (then `error` says why: refused, timed out, ...)."""

    at: float
    channel_id: str
    user: str
    calendar_id: str
    address: str
    state: str  # "sync" or "exists"
    number: int  # X-Goog-Message-Number
    headers: dict[str, str]
    status: int | None
    error: str = ""
    duration: float = 0.0


@dataclass
class Fault:
    status: int | None  # None: answer normally, only slowly
    reason: str = ""
    retry_after: str | None = None
    delay: float = 0.0
    method: str | None = None  # discovery method id, "token", or None for any API method
    where: Callable[[dict], bool] | None = None
    times: int = 1
    empty: bool = False  # answer a listing as if the calendar held nothing


@dataclass
class RecordedRequest:
    at: float
    user: str | None
    http_method: str
    path: str
    query: dict[str, list[str]]
    method_id: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    raw_body: bytes = b""
    body: dict | list | None = None  # the JSON body, parsed (None: none, or not JSON)

    @property
    def if_match(self) -> str | None:
        return self.headers.get("if-match")


ERROR_MESSAGES = {
    "rateLimitExceeded": ("usageLimits", "Rate Limit Exceeded"),
    "userRateLimitExceeded": ("usageLimits", "User Rate Limit Exceeded"),
    "quotaExceeded": ("usageLimits", "Calendar usage limits exceeded."),
    "backendError": ("global", "Backend Error"),
    "fullSyncRequired": ("global", "Sync token is no longer valid, a full sync is required."),
    "notFound": ("global", "Not Found"),
    "authError": ("global", "Invalid Credentials"),
    "required": ("global", "Login Required."),
    "badRequest": ("global", "Bad Request"),
    "invalid": ("global", "Invalid Value"),
    "forbidden": ("global", "Forbidden"),
    "parseError": ("global", "Parse Error"),
    "duplicate": ("global", "The requested identifier already exists."),
    "deleted": ("global", "Resource has been deleted"),
    "conditionNotMet": ("global", "Precondition Failed"),
    "requiredAccessLevel": ("calendar", "You need to have writer access to this calendar."),
    "insufficientPermissions": ("global", "Insufficient Permission"),
    "timeRangeEmpty": ("calendar", "The specified time range is empty."),
    "cannotUseDefaultRemindersAndSpecifyOverride": (
        "calendar",
        "Cannot specify both default reminders and overrides at the same time.",
    ),
    "channelIdNotUnique": ("global", "Channel id not unique"),
    "push.channelIdInvalid": (
        "push",
        "Channel ID must match the following regular expression: [A-Za-z0-9\\-_\\+/=]+",
    ),
    "push.channelTypeNotSupported": ("push", "Channel type is not supported."),
    "push.webhookUrlNoHostOrAddress": ("push", "WebHook callback must contain a valid URL."),
    "push.webhookUrlNotHttps": ("push", "WebHook callback must be HTTPS."),
}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    410: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
DEFAULT_REASONS = {
    400: "badRequest",
    401: "authError",
    403: "forbidden",
    404: "notFound",
    409: "duplicate",
    410: "fullSyncRequired",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}


class ApiError(Exception):
    """An error answer. `message` is the error's message; `detail_message` that of its one entry
    in `errors` when Google words it differently; `details` Google's typed details, if any."""

    def __init__(
        self,
        status: int,
        reason: str = "",
        message: str = "",
        headers=None,
        *,
        detail_message: str = "",
        details: list[dict] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.reason = reason or DEFAULT_REASONS.get(status, "badRequest")
        domain, default_message = ERROR_MESSAGES.get(self.reason, ("global", "Error"))
        self.message = message or default_message
        self.detail_message = detail_message or self.message
        self.domain = domain
        self.headers = headers or {}
        self.details = details

    def body(self) -> bytes:
        error = {
            "errors": [
                {"domain": self.domain, "reason": self.reason, "message": self.detail_message}
            ],
            "code": self.status,
            "message": self.message,
            "status": STATUS_NAMES.get(self.status, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        return json.dumps({"error": error}).encode()


class FakeGoogle:
    """The fake's state and its HTTP server. Every public method is safe to call from a test."""

    def __init__(
        self,
        *,
        client_id: str = "caly-test-client.apps.googleusercontent.com",
        client_secret: str = "caly-test-client-secret",
        page_size: int = MAX_EVENTS_PAGE,
        access_token_seconds: int = 3599,
    ):
        self.client_id = client_id
        self.client_secret = client_secret
        # Google may return fewer items than maxResults; tests use a small page to get many pages.
        self.page_size = page_size
        self.access_token_seconds = access_token_seconds
        self.users: dict[str, FakeUser] = {}
        self.requests: list[RecordedRequest] = []
        self.token_requests: list[tuple[float, str, str]] = []  # (time, grant_type, outcome)
        self.unmatched: list[tuple[str, str]] = []
        self.consent_user: FakeUser | None = None
        self._by_refresh: dict[str, FakeUser] = {}
        self._refresh_scopes: dict[str, str] = {}  # refresh token → the scopes granted with it
        self._access: dict[str, tuple[FakeUser, float, str]] = {}  # (user, expiry, scopes)
        self._codes: dict[str, dict] = {}
        self._faults: dict[str | None, list[Fault]] = collections.defaultdict(list)
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        document = load_discovery()
        self._routes, self._global_params = discovery_routes(document)
        self._event_fields = frozenset(document["schemas"]["Event"]["properties"])
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        # Push notifications: channels by id (ended ones stay: their ids are not reused), what
        # waits to be sent to each channel (in order), the channels being sent to now (one
        # sender at a time per channel, which keeps its message numbers in order), every
        # notification sent, and the sender threads.
        self.project_number = str(int(hashlib.sha1(client_id.encode()).hexdigest(), 16))[:12]
        self._channels: dict[str, FakeChannel] = {}
        self._outbox: dict[str, collections.deque[str]] = {}
        self._delivering: set[str] = set()
        self._sent: list[PushNotification] = []
        self._push_changed = threading.Condition(self._lock)
        self._push_ready: queue.SimpleQueue | None = None
        self._push_threads: list[threading.Thread] = []
        self._push_closed = False

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, port: int | None = None) -> FakeGoogle:
        self._push_closed = False
        self.port = port or free_port()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-google", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            # Nothing more goes out; a notification being sent ends within its timeout.
            self._push_closed = True
            ready, threads = self._push_ready, self._push_threads
            self._push_ready, self._push_threads = None, []
            for outbox in self._outbox.values():
                outbox.clear()
            self._push_changed.notify_all()
        for _ in threads:
            ready.put(None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_endpoint(self) -> str:
        """What Caly's CALY_GOOGLE_API_ENDPOINT points at (requests go to /calendar/v3/ below)."""
        return self.url + "/"

    @property
    def token_uri(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def auth_uri(self) -> str:
        return self.url + AUTH_PATH

    def settings(self) -> dict[str, str]:
        """Caly's settings for talking to this fake (as environment variable names)."""
        return {
            "CALY_GOOGLE_API_ENDPOINT": self.api_endpoint,
            "CALY_GOOGLE_TOKEN_URI": self.token_uri,
            "CALY_GOOGLE_AUTH_URI": self.auth_uri,
            "CALY_GOOGLE_CLIENT_ID": self.client_id,
            "CALY_GOOGLE_CLIENT_SECRET": self.client_secret,
        }

    # --- users and calendars --------------------------------------------------------------------
    def add_user(
        self,
        email: str | None = None,
        *,
        calendar_name: str = "",
        page_size: int | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> FakeUser:
        """A user with a primary calendar and a refresh token granted `scope` (space-separated;
        the default allows reading and writing events, SCOPE_READONLY only reading)."""
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        with self._lock:
            user = FakeUser(
                email=email,
                refresh_token="1//fake-" + secrets.token_urlsafe(24),
                page_size=page_size,
            )
            user.calendars[email] = FakeCalendar(
                id=email, summary=calendar_name or email, time_zone="Europe/Berlin", primary=True
            )
            self.users[email] = user
            self._by_refresh[user.refresh_token] = user
            self._refresh_scopes[user.refresh_token] = _scope_string(_scope_set(scope))
        return user

    def add_calendar(
        self,
        user: FakeUser,
        summary: str,
        *,
        time_zone: str = "UTC",
        color: str = "#9fe1e7",
        access_role: str = "owner",
    ) -> str:
        """A secondary calendar; `access_role` is the user's role on it (owner, writer, reader,
        freeBusyReader): events.insert/patch/delete need writer or owner."""
        if access_role not in ACCESS_ROLES:
            raise ValueError(f"access_role must be one of {ACCESS_ROLES}")
        calendar_id = f"{uuid.uuid4().hex[:26]}@group.calendar.google.com"
        with self._lock:
            user.calendars[calendar_id] = FakeCalendar(
                id=calendar_id,
                summary=summary,
                time_zone=time_zone,
                color=color,
                access_role=access_role,
            )
        return calendar_id

    def set_access_role(self, user: FakeUser, calendar_id: str | None, access_role: str) -> None:
        """The calendar's owner changed the user's role on it (e.g. down to "reader")."""
        if access_role not in ACCESS_ROLES:
            raise ValueError(f"access_role must be one of {ACCESS_ROLES}")
        with self._lock:
            self._calendar(user, calendar_id).access_role = access_role

    def remove_calendar(self, user: FakeUser, calendar_id: str) -> None:
        with self._lock:
            del user.calendars[calendar_id]

    def new_refresh_token(self, user: FakeUser, *, scope: str = DEFAULT_SCOPE) -> str:
        """A second grant for the same user (what reconnecting the account yields), of `scope`:
        e.g. `scope=SCOPE_READONLY` for one that cannot write."""
        with self._lock:
            token = "1//fake-" + secrets.token_urlsafe(24)
            user.refresh_token = token
            user.revoked = False
            self._by_refresh[token] = user
            self._refresh_scopes[token] = _scope_string(_scope_set(scope))
        return token

    def granted_scope(self, token: str) -> str | None:
        """The scopes (space-separated) a refresh or access token was granted; None if unknown."""
        with self._lock:
            if token in self._access:
                return self._access[token][2]
            return self._refresh_scopes.get(token)

    def revoke(self, user: FakeUser) -> None:
        """The user withdrew Caly's access: the refresh token and its access tokens stop working."""
        with self._lock:
            user.revoked = True
            for token, (owner, _, _) in list(self._access.items()):
                if owner is user:
                    del self._access[token]

    def expire_access_tokens(self, user: FakeUser) -> None:
        with self._lock:
            for token, (owner, _, scopes) in list(self._access.items()):
                if owner is user:
                    self._access[token] = (owner, 0.0, scopes)

    def expire_sync_tokens(self, user: FakeUser, calendar_id: str | None = None) -> None:
        """Every sync token issued so far for the calendar(s) is answered with 410 from now on."""
        with self._lock:
            for calendar in user.calendars.values():
                if calendar_id in (None, calendar.id):
                    calendar.token_epoch += 1

    # --- events ---------------------------------------------------------------------------------
    def _store(
        self, calendar: FakeCalendar, resource: dict, *, before_deletion: dict | None = None
    ) -> dict:
        """Every change to an event goes through here: a new etag and sequence number, so that
        incremental sync (events.list with a sync token) lists it."""
        seq = next(self._seq)
        resource["etag"] = f'"{3_000_000_000_000_000 + seq}"'
        body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        if resource["id"] not in calendar.events:
            calendar._sorted_ids = None
        calendar.events[resource["id"]] = StoredEvent(
            resource=resource, seq=seq, body=body, before_deletion=before_deletion
        )
        details = before_deletion or resource
        if "recurringEventId" not in details and details.get("iCalUID"):
            calendar._uids[details["iCalUID"]] = resource["id"]
        if calendar.channels:
            self._changed(calendar)
        return resource

    def _delete(self, calendar: FakeCalendar, event_id: str, details: dict | None = None) -> dict:
        """Delete an event (whose last details are `details`, by default the stored ones): a
        cancelled tombstone, as Google serves it; a recurring master takes its exceptions with
        it (all cancelled). Returns the event's own tombstone."""
        if details is None:
            stored = calendar.events[event_id]
            details = stored.before_deletion or stored.resource
        tombstone = self._tombstone(calendar, details)
        if "recurrence" in details and "recurringEventId" not in details:
            for other in list(calendar.events.values()):
                if other.resource.get("recurringEventId") == event_id and not other.cancelled:
                    self._tombstone(calendar, other.resource)
        return tombstone

    def _calendar(self, user: FakeUser, calendar_id: str | None) -> FakeCalendar:
        return user.calendars[calendar_id or user.primary]

    def insert_event(
        self,
        user: FakeUser,
        calendar_id: str | None = None,
        *,
        summary: str = "",
        start: str = "2026-01-05T09:00:00Z",
        end: str | None = None,
        time_zone: str | None = None,
        description: str = "",
        location: str = "",
        recurrence: list[str] | None = None,
        ical_uid: str | None = None,
        event_id: str | None = None,
        status: str = "confirmed",
    ) -> dict:
        """Create an event; `start`/`end` are RFC 3339 date-times, or dates for all-day events."""
        event_id = event_id or uuid.uuid4().hex
        if end is None:
            if len(start) == 10:
                end = (dt.date.fromisoformat(start) + dt.timedelta(days=1)).isoformat()
            else:
                end = (dt.datetime.fromisoformat(start) + dt.timedelta(hours=1)).isoformat()
        now = _now()
        resource = {
            "kind": "calendar#event",
            "etag": "",
            "id": event_id,
            "status": status,
            "htmlLink": f"https://calendar.example/event?eid={event_id}",
            "created": now,
            "updated": now,
            "summary": summary,
            "creator": {"email": user.email, "self": True},
            "organizer": {"email": user.email, "self": True},
            "start": _time_field(start, time_zone),
            "end": _time_field(end, time_zone),
            "iCalUID": ical_uid or f"{event_id}@google.com",
            "sequence": 0,
            "reminders": {"useDefault": True},
            "eventType": "default",
        }
        if description:
            resource["description"] = description
        if location:
            resource["location"] = location
        if recurrence:
            resource["recurrence"] = list(recurrence)
        with self._lock:
            return self._store(self._calendar(user, calendar_id), resource)

    def bulk_insert(self, user: FakeUser, calendar_id: str | None, count: int) -> None:
        """Fill a calendar quickly (benchmarks): `count` one-hour events, one a day at 09:00 UTC."""
        base = dt.datetime(2024, 1, 1, 9, tzinfo=dt.UTC)
        for i in range(count):
            start = base + dt.timedelta(days=i)
            self.insert_event(
                user,
                calendar_id,
                summary=f"Event {i}",
                start=start.isoformat().replace("+00:00", "Z"),
                description=f"Generated event number {i}",
                location="Room 1",
            )

    def update_event(
        self, user: FakeUser, calendar_id: str | None, event_id: str, **changes
    ) -> dict:
        """Change fields of an event (`summary="…"`, `start=`/`end=` as in insert_event, …)."""
        with self._lock:
            calendar = self._calendar(user, calendar_id)
            resource = json.loads(calendar.events[event_id].body)
            time_zone = changes.pop("time_zone", None)
            for key in ("start", "end"):
                if key in changes:
                    resource[key] = _time_field(changes.pop(key), time_zone)
            resource.update(changes)
            resource["updated"] = _now()
            resource["sequence"] = resource.get("sequence", 0) + 1
            return self._store(calendar, resource)

    def delete_event(self, user: FakeUser, calendar_id: str | None, event_id: str) -> None:
        """Delete an event; a recurring master takes its exceptions with it (all cancelled)."""
        with self._lock:
            self._delete(self._calendar(user, calendar_id), event_id)

    def override_instance(
        self,
        user: FakeUser,
        calendar_id: str | None,
        master_id: str,
        original_start: str,
        **changes,
    ) -> dict:
        """Change one occurrence of a recurring event: an exception with its own id."""
        with self._lock:
            calendar = self._calendar(user, calendar_id)
            resource = _exception(calendar.events[master_id].resource, original_start, changes)
            return self._store(calendar, resource)

    def cancel_instance(
        self, user: FakeUser, calendar_id: str | None, master_id: str, original_start: str
    ) -> dict:
        """Delete one occurrence: Google keeps a cancelled exception (no iCalUID, no summary)."""
        with self._lock:
            calendar = self._calendar(user, calendar_id)
            master = calendar.events[master_id].resource
            resource = {
                "kind": "calendar#event",
                "etag": "",
                "id": f"{master_id}_{instance_suffix(original_start)}",
                "status": "cancelled",
                "recurringEventId": master_id,
                "originalStartTime": _time_field(original_start, master["start"].get("timeZone")),
            }
            return self._store(calendar, resource)

    def event(self, user: FakeUser, calendar_id: str | None, event_id: str) -> dict:
        with self._lock:
            return json.loads(self._calendar(user, calendar_id).events[event_id].body)

    # --- push notification channels -------------------------------------------------------------
    def channels(self, user: FakeUser | None = None, *, ended: bool = False) -> list[dict]:
        """The live channels (of `user`), oldest first, as dicts: id, user, calendar_id,
        address, token, resource_id, resource_uri, expiration (ms since the epoch), params,
        created, stopped, expired, messages (the last message number sent). `ended=True`: the
        stopped and expired ones too."""
        with self._lock:
            return [
                channel.info()
                for channel in self._channels.values()
                if (user is None or channel.user == user.email) and (ended or channel.live)
            ]

    def expire_channel(self, channel_id: str) -> None:
        """The channel expires now: nothing more is sent to it (what is waiting is dropped), and
        channels.stop answers 404 for it, as for any channel Google no longer has."""
        with self._lock:
            channel = self._channels[channel_id]
            channel.expiration = min(channel.expiration, int(time.time() * 1000))
            self._end_channel(channel)

    def notifications(
        self, channel_id: str | None = None, *, state: str | None = None
    ) -> list[dict]:
        """The notifications sent so far, oldest first (to one channel; of one state: "sync" or
        "exists"), as dicts: at, channel_id, user, calendar_id, address, state, number (its
        X-Goog-Message-Number), headers (as sent), status (the receiver's HTTP status, None if
        it gave none), error (why not: refused, timed out, ...), duration."""
        with self._lock:
            return [
                {**vars(n), "headers": dict(n.headers)}
                for n in self._sent
                if (channel_id is None or n.channel_id == channel_id)
                and (state is None or n.state == state)
            ]

    def wait_for_notifications(
        self,
        count: int,
        channel_id: str | None = None,
        *,
        state: str | None = None,
        timeout: float = 5.0,
    ) -> list[dict]:
        """Wait until at least `count` such notifications were sent (they go out from background
        threads) and return them all; TimeoutError if they were not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._push_changed:
            while True:
                sent = self.notifications(channel_id, state=state)
                left = deadline - time.monotonic()
                if len(sent) >= count or left <= 0:
                    break
                self._push_changed.wait(left)
        if len(sent) < count:
            raise TimeoutError(
                f"{len(sent)} of {count} notifications sent within {timeout} s "
                f"(channel {channel_id or 'any'}, state {state or 'any'})"
            )
        return sent

    def wait_push_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no notification waits to be sent or is being sent; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._push_changed:
            while self._delivering or any(self._outbox.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._push_changed.wait(left)
        return True

    # --- faults and quotas ----------------------------------------------------------------------
    def inject(
        self,
        user: FakeUser | None,
        *,
        status: int | None = None,
        reason: str = "",
        retry_after: float | str | None = None,
        delay: float = 0.0,
        method: str | None = "calendar.events.list",
        where: Callable[[dict], bool] | None = None,
        times: int = 1,
        empty: bool = False,
    ) -> None:
        """The next `times` matching requests of `user` fail with `status` (or only answer late).

        `method` is a discovery method id ("calendar.events.list"), "token" for the token
        endpoint, or None for any API method; `where` filters on the query parameters.
        """
        fault = Fault(
            status=status,
            reason=reason or DEFAULT_REASONS.get(status or 0, ""),
            retry_after=None if retry_after is None else str(retry_after),
            delay=delay,
            method=method,
            where=where,
            times=times,
            empty=empty,
        )
        with self._lock:
            self._faults[user.email if user else None].append(fault)

    def clear_faults(self, user: FakeUser | None = None) -> None:
        with self._lock:
            self._faults.pop(user.email if user else None, None)

    def set_quota(self, user: FakeUser, *, requests: int, window: float) -> None:
        """Answer 403 userRateLimitExceeded once `user` made `requests` in the last `window` s."""
        with self._lock:
            user.quota = (requests, window)

    def _take_fault(self, user: FakeUser | None, method_id: str, query: dict) -> Fault | None:
        with self._lock:
            for key in ([user.email] if user else []) + [None]:
                for fault in self._faults.get(key, []):
                    if fault.method not in (None, method_id):
                        continue
                    if fault.method is None and method_id == "token":
                        continue
                    if fault.where is not None and not fault.where(query):
                        continue
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults[key].remove(fault)
                    return fault
        return None

    # --- what was asked -------------------------------------------------------------------------
    def api_requests(self, user: FakeUser | None = None, method_id: str | None = None) -> list:
        with self._lock:
            return [
                r
                for r in self.requests
                if (user is None or r.user == user.email)
                and (method_id is None or r.method_id == method_id)
            ]

    def stats(self) -> dict:
        with self._lock:
            counts = collections.Counter((r.user, r.method_id) for r in self.requests)
            return {
                "api": [{"user": u, "method": m, "count": c} for (u, m), c in counts.items()],
                "token": len(self.token_requests),
                "unmatched": len(self.unmatched),
                "max_in_window": {u.email: u.max_in_window for u in self.users.values()},
            }

    # --- HTTP -----------------------------------------------------------------------------------
    def handle(self, request: _Handler) -> None:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        path = parts.path
        if path == TOKEN_PATH and request.command == "POST":
            self._token_endpoint(request)
        elif path == AUTH_PATH and request.command == "GET":
            self._consent(request, query)
        elif path == STATS_PATH and request.command == "GET":
            request.reply(200, json.dumps(self.stats()).encode())
        elif path.startswith(API_PREFIX):
            self._api(request, path, query)
        else:
            request.reply(404, b'{"error": "not found"}')

    def _route(self, http_method: str, path: str) -> tuple[Route, dict] | None:
        for route in self._routes:
            if route.http_method != http_method:
                continue
            match = route.pattern.match(path)
            if match:
                return route, {k: unquote(v) for k, v in match.groupdict().items()}
        return None

    def _api(self, request: _Handler, path: str, query: dict) -> None:
        raw_body = request.read_body()  # always, or the connection's next request is garbled
        authenticated = self._authenticated_user(request.headers.get("Authorization", ""))
        user, scopes = authenticated or (None, "")
        routed = self._route(request.command, path)
        record = RecordedRequest(
            at=time.time(),
            user=user.email if user else None,
            http_method=request.command,
            path=path,
            query=query,
            method_id=routed[0].method_id if routed else "",
            headers={name.lower(): value for name, value in request.headers.items()},
            raw_body=raw_body,
            body=_json_or_none(raw_body),
        )
        with self._lock:
            self.requests.append(record)
        try:
            if routed is None:
                with self._lock:
                    self.unmatched.append((request.command, path))
                raise ApiError(404, "notFound", f"No such method: {request.command} {path}")
            route, path_params = routed
            unknown = set(query) - route.parameters - self._global_params
            if unknown:
                raise ApiError(
                    400, "invalid", f"Unknown parameter(s): {', '.join(sorted(unknown))}"
                )
            if user is None:
                raise ApiError(
                    401,
                    "authError",
                    headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
                )
            _check_scopes(route, scopes)
            fault = self._take_fault(user, route.method_id, {k: v[-1] for k, v in query.items()})
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status is not None:
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    raise ApiError(fault.status, fault.reason, headers=headers)
            self._count_against_quota(user)
            implemented = IMPLEMENTED.get(route.method_id)
            if implemented is None:
                raise ApiError(400, "badRequest", f"{route.method_id} is not implemented here")
            unsupported = set(query) - implemented - GLOBAL_IGNORED - path_params.keys()
            if unsupported:
                raise ApiError(
                    400,
                    "badRequest",
                    f"Not supported by this fake: {', '.join(sorted(unsupported))}",
                )
            if query.get("alt", ["json"])[0] != "json":
                raise ApiError(400, "invalid", "Only alt=json is served")
            handler = {
                "calendar.calendarList.list": self._calendar_list,
                "calendar.events.list": self._events_list,
                "calendar.events.get": self._events_get,
                "calendar.events.insert": self._events_insert,
                "calendar.events.patch": self._events_patch,
                "calendar.events.delete": self._events_delete,
                "calendar.events.watch": self._events_watch,
                "calendar.channels.stop": self._channels_stop,
            }[route.method_id]
            body = handler(user, path_params, {k: v[-1] for k, v in query.items()}, record)
            if fault is not None and fault.empty and route.method_id == "calendar.events.list":
                # A wrong but well-formed answer: nothing in the calendar, and a sync token.
                head = json.loads(body[: body.index(b',"items":[')] + b"}")
                head.pop("nextPageToken", None)
                head.setdefault("nextSyncToken", "fake-sync-" + _b64({"c": "", "s": 0, "e": 0}))
                body = json.dumps({**head, "items": []}).encode()
        except ApiError as exc:
            record.status = exc.status
            request.reply(exc.status, exc.body(), exc.headers)
            return
        if body is None:  # events.delete, channels.stop: 204, no body
            record.status = 204
            request.reply(204, b"")
            return
        record.status = 200
        request.reply(200, body)

    def _authenticated_user(self, header: str) -> tuple[FakeUser, str] | None:
        """The user a bearer token belongs to, and the scopes it was granted."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            found = self._access.get(token.strip())
        if found is None or found[1] < time.time() or found[0].revoked:
            return None
        return found[0], found[2]

    def _count_against_quota(self, user: FakeUser) -> None:
        with self._lock:
            if user.quota is None:
                return
            limit, window = user.quota
            now = time.monotonic()
            while user.served and user.served[0] <= now - window:
                user.served.popleft()
            if len(user.served) >= limit:
                user.quota_rejections += 1
                raise ApiError(403, "userRateLimitExceeded")
            user.served.append(now)
            user.max_in_window = max(user.max_in_window, len(user.served))

    # calendarList.list
    def _calendar_list(self, user: FakeUser, _params: dict, query: dict, _record=None) -> bytes:
        size = min(
            _int(query, "maxResults", 100, 1), MAX_CALENDAR_LIST_PAGE, user.page_size or 10**6
        )
        offset = 0
        if "pageToken" in query:
            state = _unb64(query["pageToken"])
            if not state or state.get("u") != user.email:
                raise ApiError(400, "invalid", "Invalid page token value.")
            offset = int(state["o"])
        with self._lock:
            entries = [c.entry() for c in user.calendars.values()]
        page = entries[offset : offset + size]
        result = {"kind": "calendar#calendarList", "etag": f'"{len(entries)}"', "items": page}
        if offset + size < len(entries):
            result["nextPageToken"] = _b64({"u": user.email, "o": offset + size})
        else:
            result["nextSyncToken"] = "fake-list-" + secrets.token_urlsafe(8)
        return json.dumps(result).encode()

    # events.get
    def _events_get(self, user: FakeUser, params: dict, _query: dict, _record=None) -> bytes:
        with self._lock:
            calendar = user.calendars.get(params["calendarId"])
            if params["calendarId"] == "primary":
                calendar = user.calendars[user.primary]
            stored = calendar.events.get(params["eventId"]) if calendar else None
            if stored is None:
                raise ApiError(404, "notFound")
            return stored.body

    # events.list
    def _events_list(self, user: FakeUser, params: dict, query: dict, _record=None) -> bytes:
        calendar_id = params["calendarId"]
        if calendar_id == "primary":
            calendar_id = user.primary
        with self._lock:
            calendar = user.calendars.get(calendar_id)
        if calendar is None:
            raise ApiError(404, "notFound")
        if query.get("singleEvents", "false") == "true":
            raise ApiError(400, "badRequest", "singleEvents=true is not supported by this fake")
        size = min(
            _int(query, "maxResults", 250, 1), MAX_EVENTS_PAGE, user.page_size or self.page_size
        )
        with self._lock:
            if "pageToken" in query:
                state = _unb64(query["pageToken"])
                if not state or state.get("c") != calendar.id:
                    raise ApiError(400, "invalid", "Invalid page token value.")
            elif "syncToken" in query:
                token = _unb64(query["syncToken"].removeprefix("fake-sync-"))
                if not token or token.get("c") != calendar.id:
                    raise ApiError(410, "fullSyncRequired")
                state = {"c": calendar.id, "s": token["s"], "e": token["e"], "k": ""}
                state["u"] = next(self._seq)  # snapshot: later changes wait for the next sync
                state["d"] = True
            else:
                state = {"c": calendar.id, "s": 0, "e": calendar.token_epoch, "k": ""}
                state["u"] = next(self._seq)
                state["d"] = query.get("showDeleted", "false") == "true"
            if state["e"] != calendar.token_epoch:
                raise ApiError(410, "fullSyncRequired")
            incremental = state["s"] > 0

            def listed(stored: StoredEvent) -> bool:
                if not (state["s"] < stored.seq <= state["u"]):
                    return False
                # A full listing leaves deleted events out, except cancelled occurrences of
                # recurring events (Google: unless showDeleted or singleEvents are set).
                return not stored.cancelled or incremental or state["d"] or stored.instance

            ids = calendar.sorted_ids()
            position = bisect.bisect_right(ids, state["k"]) if state["k"] else 0
            items: list[bytes] = []
            last = ""
            while position < len(ids) and len(items) < size:
                stored = calendar.events[ids[position]]
                position += 1
                if listed(stored):
                    items.append(stored.body)
                    last = stored.resource["id"]
            more = any(listed(calendar.events[i]) for i in ids[position:])
            head = {
                "kind": "calendar#events",
                "etag": f'"{state["u"]}"',
                "summary": calendar.summary,
                "description": "",
                "updated": _now(),
                "timeZone": calendar.time_zone,
                "accessRole": calendar.access_role,
                "defaultReminders": [],
            }
            if more:
                head["nextPageToken"] = _b64({**state, "k": last})
            else:
                head["nextSyncToken"] = "fake-sync-" + _b64(
                    {"c": calendar.id, "s": state["u"], "e": calendar.token_epoch}
                )
        return json.dumps(head).encode()[:-1] + b',"items":[' + b",".join(items) + b"]}"

    # --- writes: events.insert, events.patch, events.delete -------------------------------------
    def _writable_calendar(self, user: FakeUser, calendar_id: str) -> FakeCalendar:
        calendar = user.calendars.get(user.primary if calendar_id == "primary" else calendar_id)
        if calendar is None:
            raise ApiError(404, "notFound")
        if calendar.access_role not in WRITE_ROLES:
            raise ApiError(403, "requiredAccessLevel")
        return calendar

    def _uid_taken(self, calendar: FakeCalendar, uid: str) -> bool:
        holder = calendar.events.get(calendar._uids.get(uid, ""))
        if holder is None:
            return False
        details = holder.before_deletion or holder.resource
        return details.get("iCalUID") == uid and "recurringEventId" not in details

    # events.insert
    def _events_insert(
        self, user: FakeUser, params: dict, query: dict, record: RecordedRequest
    ) -> bytes:
        options = _write_options(query)
        fields = self._event_fields_of(_json_object(record), options)
        with self._lock:
            calendar = self._writable_calendar(user, params["calendarId"])
            event_id = fields.pop("id", None)
            if event_id is None:
                event_id = uuid.uuid4().hex
            elif not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
                raise ApiError(400, "invalid", "Invalid resource id value.")
            elif event_id in calendar.events:  # deleted ones too: Google keeps their ids
                raise ApiError(409, "duplicate")
            uid = fields.pop("iCalUID", None) or f"{event_id}@google.com"
            if not isinstance(uid, str):
                raise ApiError(400, "invalid", "Invalid iCalUID value.")
            if self._uid_taken(calendar, uid):
                raise ApiError(409, "duplicate")
            for key in ("recurringEventId", "originalStartTime"):
                if fields.get(key) is not None:
                    raise ApiError(
                        400,
                        "badRequest",
                        f"Not supported by this fake: {key} on insert (patch the instance id "
                        "to change one occurrence)",
                    )
            if fields.get("status") == "cancelled":
                raise ApiError(
                    400, "badRequest", "Not supported by this fake: inserting a cancelled event"
                )
            if fields.get("eventType", "default") != "default":
                raise ApiError(
                    400,
                    "badRequest",
                    f"Not supported by this fake: eventType {fields['eventType']!r}",
                )
            now = _now()
            resource = {
                "kind": "calendar#event",
                "etag": "",
                "id": event_id,
                "status": "confirmed",
                "htmlLink": f"https://calendar.example/event?eid={event_id}",
                "created": now,
                "updated": now,
                "creator": {"email": user.email, "self": True},
                "organizer": {"email": user.email, "self": True},
                "iCalUID": uid,
                "sequence": 0,
                "reminders": {"useDefault": True},
                "eventType": "default",
            }
            # An insert is no merge: what the body gives replaces the defaults (null: left out).
            for key, value in fields.items():
                if value is None:
                    resource.pop(key, None)
                else:
                    resource[key] = copy.deepcopy(value)
            _check_event(resource, times=True)
            return self._store_body(calendar, resource)

    # events.patch
    def _events_patch(
        self, user: FakeUser, params: dict, query: dict, record: RecordedRequest
    ) -> bytes:
        """Patch semantics as Google documents them: the body's fields replace the stored ones,
        objects are merged field by field, arrays replaced whole, null removes a field.

        A deleted event can be patched (Google keeps deleted events on the organizer's calendar
        "so that they can be restored"): setting its status to confirmed or tentative restores
        it, otherwise it stays deleted. An occurrence of a recurring event that has no exception
        yet becomes one (as override_instance makes it) before the patch applies; status
        "cancelled" deletes the event (cancels the occurrence)."""
        options = _write_options(query)
        fields = self._event_fields_of(_json_object(record), options)
        fields.pop("id", None)  # immutable; the path names the event
        with self._lock:
            calendar = self._writable_calendar(user, params["calendarId"])
            event_id = params["eventId"]
            stored = calendar.events.get(event_id)
            if stored is None:
                master, original_start = self._occurrence(calendar, event_id)
                # An occurrence nobody changed yet is all its series: it has the master's etag.
                _check_if_match(record.if_match, master.resource["etag"])
                base = _exception(master.resource, original_start, {})
            else:
                _check_if_match(record.if_match, stored.resource["etag"])
                base = self._details(calendar, stored)
            for key in ("iCalUID", "recurringEventId", "originalStartTime", "eventType"):
                if key in fields and fields[key] != base.get(key):
                    raise ApiError(400, "badRequest", f"Not supported by this fake: changing {key}")
            resource = _merge(base, fields)
            current = base.get("sequence", 0)
            if fields.get("sequence") is not None:
                if not isinstance(fields["sequence"], int) or fields["sequence"] < current:
                    raise ApiError(
                        400,
                        "invalid",
                        "Invalid sequence value. The specified sequence number is below the "
                        "current sequence number of the resource.",
                    )
            else:
                resource["sequence"] = current + 1
            resource["updated"] = _now()
            if resource.get("status") == "cancelled":
                if stored is None or not stored.cancelled:
                    return _serialised(self._delete(calendar, event_id, resource))
                return _serialised(self._tombstone(calendar, resource))
            # Events stored by the test helpers need not satisfy what Google asks of a request
            # (a recurring master without a timeZone): the times are checked when they change,
            # and when a deleted event comes back.
            touched = {"start", "end", "recurrence"} & fields.keys()
            _check_event(resource, times=bool(touched) or stored is None or stored.cancelled)
            return self._store_body(calendar, resource)

    # events.delete
    def _events_delete(
        self, user: FakeUser, params: dict, query: dict, record: RecordedRequest
    ) -> None:
        """204 and a cancelled tombstone; a recurring master takes its exceptions along; an
        occurrence's id cancels that occurrence. Already deleted: 410 deleted. If-Match is
        evaluated first, against the stored (possibly deleted) event."""
        _write_options(query)
        with self._lock:
            calendar = self._writable_calendar(user, params["calendarId"])
            event_id = params["eventId"]
            stored = calendar.events.get(event_id)
            if stored is None:
                master, original_start = self._occurrence(calendar, event_id)
                _check_if_match(record.if_match, master.resource["etag"])
                self._tombstone(calendar, _exception(master.resource, original_start, {}))
                return None
            _check_if_match(record.if_match, stored.resource["etag"])
            if stored.cancelled:
                raise ApiError(410, "deleted")
            self._delete(calendar, event_id)
        return None

    # --- push notifications: events.watch, channels.stop ----------------------------------------
    def _events_watch(
        self, user: FakeUser, params: dict, _query: dict, record: RecordedRequest
    ) -> bytes:
        """A web_hook channel on the calendar's events; its sync message goes out at once."""
        asked = _channel_request(_json_object(record))
        now = time.time()
        lifetime = min(asked["ttl"] or CHANNEL_DEFAULT_SECONDS, CHANNEL_MAX_SECONDS)
        expiration = int((now + lifetime) * 1000)
        if asked["expiration"] is not None:
            if asked["expiration"] <= now * 1000:
                raise ApiError(400, "invalid", "Invalid channel expiration: it is in the past.")
            expiration = min(expiration, asked["expiration"])
        with self._lock:
            calendar_id = params["calendarId"]
            calendar = user.calendars.get(user.primary if calendar_id == "primary" else calendar_id)
            if calendar is None:
                raise ApiError(404, "notFound")
            if asked["id"] in self._channels:
                raise ApiError(400, "channelIdNotUnique")
            channel = FakeChannel(
                id=asked["id"],
                user=user.email,
                calendar_id=calendar.id,
                address=asked["address"],
                token=asked["token"],
                resource_id=calendar.resource_id,
                resource_uri=f"{self.url}{API_PREFIX}calendars/{quote(calendar.id, safe='@')}"
                "/events",
                expiration=expiration,
                params=asked["params"],
                created=now,
                calendar=calendar,
            )
            self._channels[channel.id] = channel
            calendar.channels.append(channel.id)
            self._push(channel, "sync")
            return json.dumps(channel.resource()).encode()

    def _channels_stop(
        self, user: FakeUser, _params: dict, _query: dict, record: RecordedRequest
    ) -> None:
        """204; 404 notFound for a channel unknown, already ended (stopped or expired), opened
        by another user, or named with another resourceId."""
        body = _json_object(record)
        unknown = set(body) - CHANNEL_FIELDS
        if unknown:
            raise ApiError(
                400, "badRequest", f"Unknown channel field(s): {', '.join(sorted(unknown))}"
            )
        for name in ("id", "resourceId"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ApiError(400, "required", f"Required: {name}")
        with self._lock:
            channel = self._channels.get(body["id"])
            if (
                channel is None
                or not channel.live
                or channel.user != user.email
                or channel.resource_id != body["resourceId"]
            ):
                raise ApiError(
                    404,
                    "notFound",
                    f"Channel '{body['id']}' not found for project '{self.project_number}'",
                )
            channel.stopped = True
            self._end_channel(channel)
        return None

    def _end_channel(self, channel: FakeChannel) -> None:
        """A stopped or expired channel: off its calendar, and what waited for it dropped."""
        if channel.calendar is not None and channel.id in channel.calendar.channels:
            channel.calendar.channels.remove(channel.id)
        outbox = self._outbox.get(channel.id)
        if outbox:
            outbox.clear()
            self._push_changed.notify_all()

    def _changed(self, calendar: FakeCalendar) -> None:
        """An event of the calendar changed: an `exists` message for each of its live channels."""
        with self._lock:
            for channel_id in list(calendar.channels):
                channel = self._channels[channel_id]
                if channel.live:
                    self._push(channel, "exists")
                else:  # expired since
                    self._end_channel(channel)

    def _push(self, channel: FakeChannel, state: str) -> None:
        """Queue a message for the channel (under the lock; sent by a sender thread). An `exists`
        still waiting covers the changes made meanwhile: Google batches them too."""
        if self._push_closed:
            return
        outbox = self._outbox.setdefault(channel.id, collections.deque())
        if state == "exists" and outbox and outbox[-1] == "exists":
            return
        outbox.append(state)
        if channel.id in self._delivering:
            return  # its sender takes it next
        self._delivering.add(channel.id)
        if self._push_ready is None:
            self._push_ready = queue.SimpleQueue()
        if not self._push_threads:
            for number in range(PUSH_WORKERS):
                thread = threading.Thread(
                    target=self._push_sender,
                    args=(self._push_ready,),
                    name=f"fake-google-push-{number}",
                    daemon=True,
                )
                thread.start()
                self._push_threads.append(thread)
        self._push_ready.put(channel.id)

    def _push_sender(self, ready: queue.SimpleQueue) -> None:
        while True:
            channel_id = ready.get()
            if channel_id is None:
                return
            self._deliver(channel_id)

    def _deliver(self, channel_id: str) -> None:
        """Send what waits for one channel, in order, POSTing without holding the lock."""
        while True:
            with self._lock:
                channel = self._channels[channel_id]
                outbox = self._outbox[channel_id]
                if not outbox or not channel.live or self._push_closed:
                    outbox.clear()
                    self._delivering.discard(channel_id)
                    self._push_changed.notify_all()
                    return
                state = outbox.popleft()
                channel.messages += 1
                number = channel.messages
                headers = channel.headers(state, number)
                sent = copy.copy(channel)
            started = time.time()
            status, error = _post_notification(sent.address, headers, PUSH_TIMEOUT)
            with self._lock:
                self._sent.append(
                    PushNotification(
                        at=started,
                        channel_id=channel_id,
                        user=sent.user,
                        calendar_id=sent.calendar_id,
                        address=sent.address,
                        state=state,
                        number=number,
                        headers=headers,
                        status=status,
                        error=error,
                        duration=time.time() - started,
                    )
                )
                self._push_changed.notify_all()

    def _store_body(self, calendar: FakeCalendar, resource: dict) -> bytes:
        self._store(calendar, resource)
        return calendar.events[resource["id"]].body

    def _event_fields_of(self, body: dict, options: dict) -> dict:
        """The fields of a request's event body this fake acts on (read-only ones are ignored,
        as Google ignores them); fields the Event schema does not have are refused."""
        unknown = set(body) - self._event_fields
        if unknown:
            raise ApiError(
                400,
                "badRequest",
                f"Not supported by this fake: unknown event field(s) {', '.join(sorted(unknown))}",
            )
        unmodelled = {k for k in body if k in UNMODELLED_EVENT_FIELDS and body[k] is not None}
        if unmodelled:
            raise ApiError(
                400, "badRequest", f"Not supported by this fake: {', '.join(sorted(unmodelled))}"
            )
        fields = {k: v for k, v in body.items() if k not in IGNORED_EVENT_FIELDS}
        # Without conferenceDataVersion=1 Google ignores conferenceData in the body; without
        # supportsAttachments=true, attachments; eventLabelId needs eventLabelVersion=1.
        if options["conference"] == 0:
            fields.pop("conferenceData", None)
        elif isinstance(fields.get("conferenceData"), dict) and (
            "createRequest" in fields["conferenceData"]
        ):
            raise ApiError(400, "badRequest", "Not supported by this fake: creating conferences")
        if not options["attachments"]:
            fields.pop("attachments", None)
        fields.pop("eventLabelId", None)
        return fields

    def _details(self, calendar: FakeCalendar, stored: StoredEvent) -> dict:
        """The full resource of a stored event, for a deleted one what it was before (cancelled)."""
        if not stored.cancelled:
            return json.loads(stored.body)
        if stored.before_deletion is not None:
            return copy.deepcopy(stored.before_deletion)
        master = calendar.events.get(stored.resource.get("recurringEventId", ""))
        if master is not None and not master.cancelled:
            # A cancelled occurrence (cancel_instance) keeps no details: its series has them.
            original = stored.resource["originalStartTime"]
            start = original.get("date") or original["dateTime"]
            return {**_exception(master.resource, start, {}), "status": "cancelled"}
        return json.loads(stored.body)

    def _occurrence(self, calendar: FakeCalendar, event_id: str) -> tuple[StoredEvent, str]:
        """The recurring master and original start of an instance id that has no stored event:
        `<masterId>_<YYYYMMDDTHHMMSSZ>` (timed) or `<masterId>_<YYYYMMDD>` (all-day), which must
        be an occurrence of the master's recurrence; else 404 (410 if the series is deleted)."""
        master_id, sep, suffix = event_id.rpartition("_")
        master = calendar.events.get(master_id) if sep else None
        if master is None or master.instance:
            raise ApiError(404, "notFound")
        if master.cancelled:
            raise ApiError(410, "deleted")
        resource = master.resource
        if not resource.get("recurrence"):
            raise ApiError(404, "notFound")
        try:
            if "date" in resource["start"]:
                day = dt.datetime.strptime(suffix, "%Y%m%d").date()
                original: dt.date | dt.datetime = day
                original_start = day.isoformat()
            else:
                instant = dt.datetime.strptime(suffix, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
                original = instant
                original_start = _in_zone_of(resource["start"], instant).isoformat()
        except ValueError:
            raise ApiError(404, "notFound") from None
        if not _is_occurrence(resource, original):
            raise ApiError(404, "notFound")
        return master, original_start

    def _tombstone(self, calendar: FakeCalendar, details: dict) -> dict:
        """Store the cancelled tombstone of an event (or occurrence) whose details are these."""
        tombstone = {"kind": "calendar#event", "etag": "", "id": details["id"]}
        tombstone["status"] = "cancelled"
        if "recurringEventId" in details:
            tombstone["recurringEventId"] = details["recurringEventId"]
            tombstone["originalStartTime"] = details["originalStartTime"]
        return self._store(calendar, tombstone, before_deletion={**details, "status": "cancelled"})

    # --- OAuth ----------------------------------------------------------------------------------
    def _consent(self, request: _Handler, query: dict) -> None:
        q = {k: v[-1] for k, v in query.items()}
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect:
            request.reply(400, b"Error 401: invalid_client", content_type="text/plain")
            return
        if not q.get("scope", "").strip():
            request.reply(
                400,
                b"Error 400: invalid_request\nMissing required parameter: scope",
                content_type="text/plain",
            )
            return
        user = self.consent_user
        if user is None:
            params = {"error": "access_denied", "state": q.get("state", "")}
        else:
            code = "4/fake-" + secrets.token_urlsafe(16)
            with self._lock:
                self._codes[code] = {
                    "user": user,
                    "redirect_uri": redirect,
                    "challenge": q.get("code_challenge"),
                    "scope": q.get("scope", ""),
                    "include_granted_scopes": q.get("include_granted_scopes") == "true",
                }
            params = {"code": code, "scope": q.get("scope", ""), "state": q.get("state", "")}
        separator = "&" if "?" in redirect else "?"
        request.reply(302, b"", {"Location": redirect + separator + urlencode(params)})

    def _token_endpoint(self, request: _Handler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        form = {k: v[-1] for k, v in parse_qs(request.rfile.read(length).decode()).items()}
        grant = form.get("grant_type", "")
        user = self._by_refresh.get(form.get("refresh_token", ""))
        fault = self._take_fault(user, "token", form)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                self.token_requests.append((time.time(), grant, f"fault {fault.status}"))
                error = {"error": "internal_failure" if fault.status >= 500 else fault.reason}
                request.reply(fault.status, json.dumps(error).encode())
                return
        status, body = self._grant(form, grant)
        with self._lock:
            self.token_requests.append((time.time(), grant, body.get("error", "ok")))
        request.reply(status, json.dumps(body).encode())

    def _grant(self, form: dict, grant: str) -> tuple[int, dict]:
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        with self._lock:
            if grant == "refresh_token":
                user = self._by_refresh.get(form.get("refresh_token", ""))
                if user is None or user.revoked or user.refresh_token != form["refresh_token"]:
                    return 400, {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    }
                granted = self._refresh_scopes.get(user.refresh_token, DEFAULT_SCOPE)
                if form.get("scope"):  # a narrower token than the grant: a subset of it
                    asked = _scope_set(form["scope"])
                    if not asked <= _scope_set(granted):
                        return 400, {
                            "error": "invalid_scope",
                            "error_description": "Some requested scopes were not granted.",
                        }
                    granted = _scope_string(asked)
                return 200, self._issue_access(user, granted)
            if grant == "authorization_code":
                issued = self._codes.pop(form.get("code", ""), None)
                if issued is None or issued["redirect_uri"] != form.get("redirect_uri"):
                    return 400, {"error": "invalid_grant", "error_description": "Bad Request"}
                if issued["challenge"]:
                    verifier = form.get("code_verifier", "")
                    digest = hashlib.sha256(verifier.encode()).digest()
                    expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
                    if expected != issued["challenge"]:
                        return 400, {
                            "error": "invalid_grant",
                            "error_description": "Invalid code verifier.",
                        }
                user = issued["user"]
                # The grant carries what the user consented to; with include_granted_scopes,
                # what the user granted this client before (and did not revoke) as well.
                scopes = _scope_set(issued["scope"])
                if issued["include_granted_scopes"] and not user.revoked:
                    scopes |= _scope_set(self._refresh_scopes.get(user.refresh_token, ""))
                user.revoked = False
                granted = _scope_string(scopes)
                self._refresh_scopes[user.refresh_token] = granted
                body = self._issue_access(user, granted)
                body["refresh_token"] = user.refresh_token
                return 200, body
        return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}

    def _issue_access(self, user: FakeUser, scope: str) -> dict:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._access[token] = (user, time.time() + self.access_token_seconds, scope)
        return {
            "access_token": token,
            "expires_in": self.access_token_seconds,
            "scope": scope,
            "token_type": "Bearer",
        }


def _channel_request(body: dict) -> dict:
    """The channel an events.watch body asks for, checked as Google checks it (400s)."""
    unknown = set(body) - CHANNEL_FIELDS
    if unknown:
        raise ApiError(400, "badRequest", f"Unknown channel field(s): {', '.join(sorted(unknown))}")
    channel_id = body.get("id")
    if channel_id is None or channel_id == "":
        raise ApiError(400, "required", "Required: channel.id")
    if (
        not isinstance(channel_id, str)
        or len(channel_id) > CHANNEL_ID_MAX
        or not CHANNEL_ID.fullmatch(channel_id)
    ):
        raise ApiError(400, "push.channelIdInvalid")
    kind = body.get("type")
    if kind is None or kind == "":
        raise ApiError(400, "required", "Required: channel.type")
    if kind not in CHANNEL_TYPES:
        raise ApiError(
            400, "push.channelTypeNotSupported", f"Channel type '{kind}' is not supported."
        )
    address = body.get("address")
    parts = urlsplit(address) if isinstance(address, str) else None
    try:
        host = parts.hostname if parts and parts.port != 0 else None  # .port: ValueError if bad
    except ValueError:
        host = None
    if not host or parts.scheme not in ("http", "https"):
        raise ApiError(
            400,
            "push.webhookUrlNoHostOrAddress",
            f"WebHook callback must contain a valid URL: {address}",
        )
    if parts.scheme != "https" and not _loopback(host):
        # Google delivers over HTTPS only; this fake also to plain HTTP on a loopback address.
        raise ApiError(400, "push.webhookUrlNotHttps", f"WebHook callback must be HTTPS: {address}")
    token = body.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > CHANNEL_TOKEN_MAX):
        raise ApiError(400, "invalid", "Invalid channel token.")
    if body.get("payload"):
        raise ApiError(400, "badRequest", "Not supported by this fake: payload")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "invalid", "Invalid channel params.")
    unsupported = set(params) - {"ttl"}
    if unsupported:
        raise ApiError(
            400,
            "badRequest",
            f"Not supported by this fake: channel params {', '.join(sorted(unsupported))}",
        )
    ttl = None
    if "ttl" in params:
        try:
            ttl = int(params["ttl"])
        except (TypeError, ValueError):
            ttl = 0
        if isinstance(params["ttl"], bool) or ttl <= 0:
            raise ApiError(400, "invalid", "Invalid value for params.ttl")
    expiration = body.get("expiration")
    if expiration is not None:
        try:
            expiration = int(expiration)
        except (TypeError, ValueError):
            raise ApiError(400, "invalid", "Invalid channel expiration.") from None
    return {
        "id": channel_id,
        "address": address,
        "token": token,
        "ttl": ttl,
        "expiration": expiration,
        "params": {k: str(v) for k, v in params.items()},
    }


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _post_notification(
    address: str, headers: dict[str, str], timeout: float
) -> tuple[int | None, str]:
    """POST an empty notification; the receiver's status, or None and what went wrong."""
    parts = urlsplit(address)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", target, body=b"", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, ""
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def _int(query: dict, name: str, default: int, minimum: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise ApiError(400, "invalid", f"Invalid value for {name}") from None
    if value < minimum:
        raise ApiError(400, "invalid", f"Invalid value for {name}")
    return value


def _scope_set(text: str) -> set[str]:
    return set((text or "").split())


def _scope_string(scopes) -> str:
    return " ".join(sorted(scopes))


def _check_scopes(route: Route, granted: str) -> None:
    """403 insufficientPermissions unless the token has one of the scopes the discovery document
    lists for the method (as Google's front end answers, before anything else is looked at)."""
    allowed = _scope_set(granted) & route.scopes
    if not allowed:
        resource, _, method = route.method_id.removeprefix("calendar.").rpartition(".")
        rpc_method = f"calendar.v3.{resource[:1].upper()}{resource[1:]}.{method.capitalize()}"
        raise ApiError(
            403,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
            headers={
                "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                f'error="insufficient_scope", scope="{_scope_string(route.scopes)}"'
            },
            detail_message="Insufficient Permission",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                    "domain": "googleapis.com",
                    "metadata": {
                        "method": rpc_method,
                        "service": "calendar-json.googleapis.com",
                    },
                }
            ],
        )
    if not allowed & MODELLED_SCOPES:
        raise ApiError(
            400,
            "badRequest",
            f"Not supported by this fake: authorisation through {_scope_string(allowed)}",
        )


def _json_or_none(raw: bytes) -> dict | list | None:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _json_object(record: RecordedRequest) -> dict:
    """The request's JSON object body ({} when there is none); 400 parseError otherwise."""
    if not record.raw_body.strip():
        return {}
    if not isinstance(record.body, dict):
        raise ApiError(400, "parseError")
    return record.body


def _check_if_match(header: str | None, etag: str) -> None:
    """If-Match (strong comparison, a list or *): 412 conditionNotMet when no tag matches."""
    if header is None:
        return
    tags = [tag.strip() for tag in header.split(",")]
    if "*" not in tags and etag not in tags:
        raise ApiError(412, "conditionNotMet")


def _write_options(query: dict) -> dict:
    send = query.get("sendUpdates")
    if send is not None and send not in ("all", "externalOnly", "none"):
        raise ApiError(400, "invalid", "Invalid value for sendUpdates")
    for name in ("sendNotifications", "supportsAttachments"):
        if name in query and query[name] not in ("true", "false"):
            raise ApiError(400, "invalid", f"Invalid value for {name}")
    version = _int(query, "conferenceDataVersion", 0, 0)
    if version > 1:
        raise ApiError(400, "invalid", "Invalid value for conferenceDataVersion")
    return {"conference": version, "attachments": query.get("supportsAttachments") == "true"}


def _merge(target: dict, patch: dict) -> dict:
    """Google's patch semantics: objects merged field by field, arrays replaced, null deletes."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _serialised(resource: dict) -> bytes:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()


DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def _check_event(resource: dict, *, times: bool) -> None:
    """What Google refuses in an event it is to store (400s); a dateTime without an offset gets
    its timeZone's, as Google answers with one. `times=False` leaves start/end unchecked."""
    for key in STRING_FIELDS:
        if key in resource and not isinstance(resource[key], str):
            raise ApiError(400, "invalid", f"Invalid value for {key}")
    for key, allowed in ENUM_FIELDS.items():
        if key in resource and resource[key] not in allowed:
            raise ApiError(400, "invalid", f"Invalid value for {key}")
    sequence = resource.get("sequence", 0)
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise ApiError(400, "invalid", "Invalid sequence value.")
    reminders = resource.get("reminders")
    if isinstance(reminders, dict) and reminders.get("useDefault") and reminders.get("overrides"):
        raise ApiError(400, "cannotUseDefaultRemindersAndSpecifyOverride")
    recurrence = resource.get("recurrence")
    if recurrence is not None:
        if not isinstance(recurrence, list) or not all(
            isinstance(line, str) and RECURRENCE_LINE.match(line) for line in recurrence
        ):
            raise ApiError(400, "invalid", "Invalid recurrence rule.")
        if recurrence and "recurringEventId" in resource:
            raise ApiError(
                400, "badRequest", "Not supported by this fake: recurrence on an occurrence"
            )
    if times:
        _check_times(resource, recurring=bool(recurrence))


def _check_times(resource: dict, *, recurring: bool) -> None:
    moments = {}
    for key in ("start", "end"):
        value = resource.get(key)
        if not isinstance(value, dict) or not (value.get("date") or value.get("dateTime")):
            raise ApiError(400, "required", f"Missing {key} time.")
        if value.get("date") and value.get("dateTime"):
            raise ApiError(400, "invalid", f"Invalid {key} time.")
        zone = None
        if value.get("timeZone") is not None:
            try:
                zone = ZoneInfo(value["timeZone"])
            except (ZoneInfoNotFoundError, ValueError, TypeError):
                raise ApiError(
                    400, "invalid", f"Invalid time zone definition for {key} time."
                ) from None
        if value.get("date"):
            text = value["date"]
            if not isinstance(text, str) or not DATE.fullmatch(text):
                raise ApiError(400, "invalid", f"Invalid {key} time.")
            try:
                moments[key] = ("date", dt.date.fromisoformat(text))
            except ValueError:
                raise ApiError(400, "invalid", f"Invalid {key} time.") from None
            continue
        text = value["dateTime"]
        if not isinstance(text, str) or not DATE_TIME.fullmatch(text):
            raise ApiError(400, "invalid", f"Invalid {key} time.")
        try:
            instant = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ApiError(400, "invalid", f"Invalid {key} time.") from None
        if zone is None and (instant.tzinfo is None or recurring):
            # A recurring event is expanded in its timeZone, which it must name.
            raise ApiError(400, "required", f"Missing time zone definition for {key} time.")
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=zone)
            value["dateTime"] = instant.isoformat()
        moments[key] = ("dateTime", instant)
    if moments["start"][0] != moments["end"][0]:
        raise ApiError(
            400, "invalid", "Start and end times must either both be date or both be dateTime."
        )
    if moments["end"][1] < moments["start"][1]:
        raise ApiError(400, "timeRangeEmpty")


def _exception(master: dict, original_start: str, changes: dict) -> dict:
    """A new exception of a recurring master for the occurrence starting at `original_start`:
    the master's fields, its own id, recurringEventId and originalStartTime (see
    `override_instance` for `changes`)."""
    changes = dict(changes)
    zone = master["start"].get("timeZone")
    original = _time_field(original_start, zone)
    instance_id = f"{master['id']}_{instance_suffix(original_start)}"
    duration = _duration(master)
    start = changes.pop("start", original_start)
    end = changes.pop("end", None) or _plus(start, duration)
    resource = {k: v for k, v in master.items() if k not in ("recurrence", "etag", "id", "start")}
    resource.update(
        id=instance_id,
        recurringEventId=master["id"],
        originalStartTime=original,
        start=_time_field(start, zone),
        end=_time_field(end, zone),
        updated=_now(),
    )
    resource.update(changes)
    return copy.deepcopy(resource)


def _in_zone_of(start: dict, instant: dt.datetime) -> dt.datetime:
    """`instant` as a time of the master's timeZone, else of its start's own UTC offset."""
    try:
        if start.get("timeZone"):
            return instant.astimezone(ZoneInfo(start["timeZone"]))
    except (ZoneInfoNotFoundError, ValueError):
        pass
    own = dt.datetime.fromisoformat(start["dateTime"]).tzinfo
    return instant.astimezone(own or dt.UTC)


def _is_occurrence(master: dict, original: dt.date | dt.datetime) -> bool:
    """Whether the master's recurrence (expanded with dateutil) has an occurrence starting at
    `original`; a rule dateutil cannot expand is given the benefit of the doubt."""
    start = master["start"]
    try:
        if "date" in start:
            dtstart = dt.datetime.combine(dt.date.fromisoformat(start["date"]), dt.time())
            target = dt.datetime.combine(original, dt.time())
        else:
            dtstart = dt.datetime.fromisoformat(start["dateTime"])
            if start.get("timeZone"):
                zone = ZoneInfo(start["timeZone"])
                dtstart = (
                    dtstart.replace(tzinfo=zone)
                    if dtstart.tzinfo is None
                    else dtstart.astimezone(zone)
                )
            target = original
        rules = rrulestr("\n".join(master["recurrence"]), dtstart=dtstart, forceset=True)
        return target in rules
    except (ValueError, TypeError, KeyError, ZoneInfoNotFoundError):
        return True


def _duration(resource: dict) -> dt.timedelta:
    start, end = resource["start"], resource["end"]
    if "date" in start:
        return dt.date.fromisoformat(end["date"]) - dt.date.fromisoformat(start["date"])
    return dt.datetime.fromisoformat(end["dateTime"]) - dt.datetime.fromisoformat(start["dateTime"])


def _plus(start: str, duration: dt.timedelta) -> str:
    if len(start) == 10:
        return (dt.date.fromisoformat(start) + duration).isoformat()
    return (dt.datetime.fromisoformat(start) + duration).isoformat()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeGoogle/1.0"

    def log_message(self, format, *args):
        pass

    def read_body(self) -> bytes:
        """The request's body (Content-Length or chunked), so that none is left unread."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(
        self,
        status: int,
        body: bytes,
        headers: dict | None = None,
        content_type: str = "application/json; charset=UTF-8",
    ) -> None:
        try:
            self.send_response(status)
            if status != 204:  # 204 No Content: neither a body nor its headers
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up waiting (a timeout test); nothing to tell it.
            self.close_connection = True

    def _dispatch(self):
        self.server.fake.handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


def main() -> None:
    """Serve a seeded fake from its own process (the benchmark), printing how to reach it."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=0)
    args = parser.parse_args()
    fake = FakeGoogle().start()
    user = fake.add_user()
    fake.bulk_insert(user, None, args.events)
    print(
        json.dumps(
            {**fake.settings(), "refresh_token": user.refresh_token, "calendar": user.primary}
        ),
        flush=True,
    )
    threading.Event().wait()


if __name__ == "__main__":
    main()
