"""A local Google Calendar API v3 and OAuth 2.0 server on a free loopback port, over real HTTP.

What it implements behaves as Google documents it: calendarList.list and events.list with real
paging, sync tokens that expire (HTTP 410 fullSyncRequired), cancelled events after deletion,
recurring masters and their exceptions (recurringEventId + originalStartTime), events.get, a
token endpoint (refresh, authorization code with PKCE, invalid_grant) and the consent redirect.
Requests are routed with the discovery document that ships with google-api-python-client, so a
request the real API would not recognise fails here too; parameters this fake does not implement
are refused loudly instead of being ignored.

Tests inject faults per user (403 rate limits, 429 with Retry-After, 5xx, slow answers), set a
per-user quota (a sliding window, as Google counts per user per minute), and read back every
request the client sent.
"""

from __future__ import annotations

import base64
import bisect
import collections
import datetime as dt
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import googleapiclient

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
}
GLOBAL_IGNORED = {"alt", "prettyPrint", "quotaUser", "userIp", "key"}


# --- the discovery document as a router -------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method_id: str
    http_method: str
    pattern: re.Pattern
    parameters: frozenset[str]
    literal_length: int


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
    events: dict[str, StoredEvent] = field(default_factory=dict)
    # Sync tokens carry the epoch they were issued in; expiring tokens moves to a new epoch.
    token_epoch: int = 0
    _sorted_ids: list[str] | None = None

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
            "accessRole": "owner",
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
}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    410: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
DEFAULT_REASONS = {
    400: "badRequest",
    401: "authError",
    403: "forbidden",
    404: "notFound",
    410: "fullSyncRequired",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str = "", message: str = "", headers=None):
        super().__init__(message)
        self.status = status
        self.reason = reason or DEFAULT_REASONS.get(status, "badRequest")
        domain, default_message = ERROR_MESSAGES.get(self.reason, ("global", "Error"))
        self.message = message or default_message
        self.domain = domain
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps(
            {
                "error": {
                    "errors": [
                        {"domain": self.domain, "reason": self.reason, "message": self.message}
                    ],
                    "code": self.status,
                    "message": self.message,
                    "status": STATUS_NAMES.get(self.status, "UNKNOWN"),
                }
            }
        ).encode()


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
        self._access: dict[str, tuple[FakeUser, float]] = {}
        self._codes: dict[str, dict] = {}
        self._faults: dict[str | None, list[Fault]] = collections.defaultdict(list)
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        self._routes, self._global_params = discovery_routes()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, port: int | None = None) -> FakeGoogle:
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
        self, email: str | None = None, *, calendar_name: str = "", page_size: int | None = None
    ) -> FakeUser:
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
        return user

    def add_calendar(
        self, user: FakeUser, summary: str, *, time_zone: str = "UTC", color: str = "#9fe1e7"
    ) -> str:
        calendar_id = f"{uuid.uuid4().hex[:26]}@group.calendar.google.com"
        with self._lock:
            user.calendars[calendar_id] = FakeCalendar(
                id=calendar_id, summary=summary, time_zone=time_zone, color=color
            )
        return calendar_id

    def remove_calendar(self, user: FakeUser, calendar_id: str) -> None:
        with self._lock:
            del user.calendars[calendar_id]

    def new_refresh_token(self, user: FakeUser) -> str:
        """A second grant for the same user (what reconnecting the account yields)."""
        with self._lock:
            token = "1//fake-" + secrets.token_urlsafe(24)
            user.refresh_token = token
            user.revoked = False
            self._by_refresh[token] = user
        return token

    def revoke(self, user: FakeUser) -> None:
        """The user withdrew Caly's access: the refresh token and its access tokens stop working."""
        with self._lock:
            user.revoked = True
            for token, (owner, _) in list(self._access.items()):
                if owner is user:
                    del self._access[token]

    def expire_access_tokens(self, user: FakeUser) -> None:
        with self._lock:
            for token, (owner, _) in list(self._access.items()):
                if owner is user:
                    self._access[token] = (owner, 0.0)

    def expire_sync_tokens(self, user: FakeUser, calendar_id: str | None = None) -> None:
        """Every sync token issued so far for the calendar(s) is answered with 410 from now on."""
        with self._lock:
            for calendar in user.calendars.values():
                if calendar_id in (None, calendar.id):
                    calendar.token_epoch += 1

    # --- events ---------------------------------------------------------------------------------
    def _store(self, calendar: FakeCalendar, resource: dict) -> dict:
        seq = next(self._seq)
        resource["etag"] = f'"{3_000_000_000_000_000 + seq}"'
        body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        if resource["id"] not in calendar.events:
            calendar._sorted_ids = None
        calendar.events[resource["id"]] = StoredEvent(resource=resource, seq=seq, body=body)
        return resource

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
            calendar = self._calendar(user, calendar_id)
            doomed = [event_id]
            if "recurrence" in calendar.events[event_id].resource:
                doomed += [
                    e.resource["id"]
                    for e in calendar.events.values()
                    if e.resource.get("recurringEventId") == event_id and not e.cancelled
                ]
            for doomed_id in doomed:
                old = calendar.events[doomed_id].resource
                tombstone = {"kind": "calendar#event", "etag": "", "id": doomed_id}
                tombstone["status"] = "cancelled"
                if "recurringEventId" in old:
                    tombstone["recurringEventId"] = old["recurringEventId"]
                    tombstone["originalStartTime"] = old["originalStartTime"]
                self._store(calendar, tombstone)

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
            master = calendar.events[master_id].resource
            original = _time_field(original_start, master["start"].get("timeZone"))
            instance_id = f"{master_id}_{instance_suffix(original_start)}"
            duration = _duration(master)
            start = changes.pop("start", original_start)
            end = changes.pop("end", None) or _plus(start, duration)
            resource = {
                k: v for k, v in master.items() if k not in ("recurrence", "etag", "id", "start")
            }
            resource.update(
                id=instance_id,
                recurringEventId=master_id,
                originalStartTime=original,
                start=_time_field(start, master["start"].get("timeZone")),
                end=_time_field(end, master["start"].get("timeZone")),
                updated=_now(),
            )
            resource.update(changes)
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
        user = self._authenticated_user(request.headers.get("Authorization", ""))
        routed = self._route(request.command, path)
        record = RecordedRequest(
            at=time.time(),
            user=user.email if user else None,
            http_method=request.command,
            path=path,
            query=query,
            method_id=routed[0].method_id if routed else "",
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
            }[route.method_id]
            body = handler(user, path_params, {k: v[-1] for k, v in query.items()})
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
        record.status = 200
        request.reply(200, body)

    def _authenticated_user(self, header: str) -> FakeUser | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            found = self._access.get(token.strip())
        if found is None or found[1] < time.time() or found[0].revoked:
            return None
        return found[0]

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
    def _calendar_list(self, user: FakeUser, _params: dict, query: dict) -> bytes:
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
    def _events_get(self, user: FakeUser, params: dict, _query: dict) -> bytes:
        with self._lock:
            calendar = user.calendars.get(params["calendarId"])
            if params["calendarId"] == "primary":
                calendar = user.calendars[user.primary]
            stored = calendar.events.get(params["eventId"]) if calendar else None
            if stored is None:
                raise ApiError(404, "notFound")
            return stored.body

    # events.list
    def _events_list(self, user: FakeUser, params: dict, query: dict) -> bytes:
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
                "accessRole": "owner",
                "defaultReminders": [],
            }
            if more:
                head["nextPageToken"] = _b64({**state, "k": last})
            else:
                head["nextSyncToken"] = "fake-sync-" + _b64(
                    {"c": calendar.id, "s": state["u"], "e": calendar.token_epoch}
                )
        return json.dumps(head).encode()[:-1] + b',"items":[' + b",".join(items) + b"]}"

    # --- OAuth ----------------------------------------------------------------------------------
    def _consent(self, request: _Handler, query: dict) -> None:
        q = {k: v[-1] for k, v in query.items()}
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect:
            request.reply(400, b"Error 401: invalid_client", content_type="text/plain")
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
                return 200, self._issue_access(user)
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
                user.revoked = False
                body = self._issue_access(user)
                body["refresh_token"] = user.refresh_token
                body["scope"] = issued["scope"]
                return 200, body
        return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}

    def _issue_access(self, user: FakeUser) -> dict:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._access[token] = (user, time.time() + self.access_token_seconds)
        return {
            "access_token": token,
            "expires_in": self.access_token_seconds,
            "scope": "https://www.googleapis.com/auth/calendar.readonly",
            "token_type": "Bearer",
        }


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

    def reply(
        self,
        status: int,
        body: bytes,
        headers: dict | None = None,
        content_type: str = "application/json; charset=UTF-8",
    ) -> None:
        try:
            self.send_response(status)
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
