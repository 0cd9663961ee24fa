"""CalDAV provider (RFC 4791 / 6578 / 6764) on python-caldav, sending through Caly's HTTP session.

Per sync of an unchanged account it costs one PROPFIND (calendar list with ctags and sync
tokens) and one sync-collection REPORT per calendar; changed objects come in calendar-multiget
batches, never one GET each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from urllib.parse import urljoin, urlsplit

import caldav
import niquests
from caldav.lib import error as caldav_error
from caldav.lib.url import URL
from django.conf import settings
from lxml import etree

from sync import http
from sync.engine import listing_diff, normalize_href
from sync.ical import MalformedObject, parse_object
from sync.providers.base import (
    AuthError,
    ChangeBatch,
    ConnectError,
    Cursor,
    Provider,
    ProviderError,
    RemoteCalendar,
    RemoteObject,
    SkippedObject,
    TransientError,
)

logger = logging.getLogger(__name__)

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CS = "http://calendarserver.org/ns/"
ICAL = "http://apple.com/ns/ical/"
NS = {"d": DAV, "c": CALDAV, "cs": CS, "ic": ICAL}

CALENDAR_LIST_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"
            xmlns:cs="http://calendarserver.org/ns/" xmlns:ic="http://apple.com/ns/ical/">
  <d:prop><d:resourcetype/><d:displayname/><cs:getctag/><d:sync-token/>
    <ic:calendar-color/><c:calendar-timezone/><c:supported-calendar-component-set/>
    <d:supported-report-set/></d:prop>
</d:propfind>"""

ETAG_LIST_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:resourcetype/></d:prop></d:propfind>"""

MULTIGET_HEAD = """<?xml version="1.0" encoding="utf-8"?>
<c:calendar-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:prop><d:getetag/><c:calendar-data/></d:prop>"""

SYNC_TOKEN_INVALID = "{DAV:}valid-sync-token"


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


class CalDAVProvider(Provider):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client: caldav.DAVClient | None = None

    # --- plumbing ------------------------------------------------------------------------
    @property
    def client(self) -> caldav.DAVClient:
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

    def _request(self, url: str, method: str, body: str = "", headers=None):
        """One HTTP call, with library and transport errors mapped to Caly's error kinds."""
        try:
            response = self.client.request(url, method, body, headers or {})
        except caldav_error.AuthorizationError as exc:
            if SYNC_TOKEN_INVALID in getattr(exc, "preconditions", []):
                raise
            raise AuthError("The CalDAV server refused the username or password.") from exc
        except caldav_error.RateLimitError as exc:
            raise TransientError(
                "The CalDAV server asked us to slow down (HTTP 429/503).",
                retry_after=getattr(exc, "retry_after_seconds", None),
            ) from exc
        except etree.XMLSyntaxError as exc:
            raise ProviderError(f"The CalDAV server at {self._host()} sent invalid XML.") from exc
        except niquests.exceptions.Timeout as exc:
            raise TransientError(
                f"The CalDAV server at {self._host()} did not answer in time."
            ) from exc
        except niquests.exceptions.ConnectionError as exc:
            raise TransientError(f"Cannot connect to the CalDAV server at {self._host()}.") from exc
        status = response.status
        if status in (401, 403) and method != "REPORT":
            raise AuthError("The CalDAV server refused the username or password.")
        if status == 429 or status >= 500:
            raise TransientError(f"The CalDAV server at {self._host()} answered HTTP {status}.")
        return response

    def _host(self) -> str:
        return urlsplit(self.url).netloc.rpartition("@")[2] or self.url

    def _multistatus(self, url: str, method: str, body: str, depth: str | None) -> etree._Element:
        headers = {"Content-Type": "application/xml; charset=utf-8"}
        if depth is not None:
            headers["Depth"] = depth
        response = self._request(url, method, body, headers)
        if response.status != 207 or response.tree is None:
            raise ProviderError(
                f"{method} {urlsplit(url).path} answered HTTP {response.status}, expected 207."
            )
        return response.tree

    # --- discovery -----------------------------------------------------------------------
    def _find_home(self) -> str:
        """Server root, principal or calendar home → the calendar home URL (RFC 6764 §5)."""
        candidates = [self.url, urljoin(self.url, "/.well-known/caldav")]
        for candidate in candidates:
            try:
                self.client.url = URL.objectify(candidate)
                principal = self.client.principal()
                return str(principal.calendar_home_set.url)
            except AuthError:
                raise
            except caldav_error.AuthorizationError as exc:
                raise AuthError("The CalDAV server refused the username or password.") from exc
            except TransientError:
                raise
            except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError) as exc:
                raise ConnectError(
                    f"Cannot connect to {self._host()}: is the address right?"
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
            home = self.home_url or self._find_home()
            calendars = self._list_calendars(home)
            if not calendars and home == self.url:
                raise ConnectError(f"No CalDAV calendars found at {self.url}.")
        except TransientError as exc:
            raise ConnectError(str(exc)) from exc
        except ProviderError as exc:
            if isinstance(exc, (AuthError, ConnectError)):
                raise
            raise ConnectError(f"{self.url} does not look like a CalDAV server: {exc}") from exc
        self.home_url = home
        return calendars

    def _list_calendars(self, home: str) -> list[RemoteCalendar]:
        tree = self._multistatus(home, "PROPFIND", CALENDAR_LIST_BODY, "1")
        self._supports_sync = {}
        self._ctags = {}
        calendars = []
        for resp in tree.findall("d:response", NS):
            href = resp.findtext("d:href", namespaces=NS)
            prop = _ok_prop(resp)
            if href is None or prop is None or prop.find("d:resourcetype/c:calendar", NS) is None:
                continue
            components = [
                c.get("name") for c in prop.findall("c:supported-calendar-component-set/c:comp", NS)
            ]
            if components and "VEVENT" not in components:
                continue
            url = urljoin(home, href)
            reports = {
                etree.QName(r).localname
                for r in prop.iterfind(".//d:supported-report/d:report/*", NS)
            }
            self._supports_sync[normalize_href(url)] = "sync-collection" in reports or bool(
                prop.findtext("d:sync-token", namespaces=NS)
            )
            self._ctags[normalize_href(url)] = (
                prop.findtext("cs:getctag", namespaces=NS) or ""
            ).strip()
            calendars.append(
                RemoteCalendar(
                    remote_id=url,
                    name=(prop.findtext("d:displayname", namespaces=NS) or "").strip()
                    or urlsplit(url).path.rstrip("/").rpartition("/")[2],
                    color=(prop.findtext("ic:calendar-color", namespaces=NS) or "").strip()[:32],
                    timezone=_vtimezone_id(
                        prop.findtext("c:calendar-timezone", namespaces=NS) or ""
                    ),
                )
            )
        return calendars

    # --- changes -------------------------------------------------------------------------
    def changes(
        self, calendar: RemoteCalendar, *, cursor: Cursor, known: Mapping[str, str]
    ) -> Iterator[ChangeBatch]:
        key = normalize_href(calendar.remote_id)
        if not hasattr(self, "_supports_sync"):
            self._list_calendars(self.home_url or self._find_home())
        ctag = self._ctags.get(key, "")
        if self._supports_sync.get(key, False):
            yield from self._changes_by_sync_token(calendar, cursor=cursor, known=known, ctag=ctag)
        else:
            yield from self._changes_by_listing(calendar, cursor=cursor, known=known, ctag=ctag)

    def _changes_by_sync_token(self, calendar, *, cursor, known, ctag) -> Iterator[ChangeBatch]:
        collection = caldav.Calendar(client=self.client, url=calendar.remote_id)
        try:
            result = self._sync_collection(collection, cursor.sync_token)
            full = not cursor.sync_token
        except caldav_error.DAVError as exc:
            if not cursor.sync_token:
                raise ProviderError(
                    f"sync-collection failed on {urlsplit(calendar.remote_id).path}: {exc}"
                ) from exc
            logger.info(
                "sync token of %s no longer valid; resyncing fully",
                urlsplit(calendar.remote_id).path,
            )
            result = self._sync_collection(collection, "")
            full = True
        listed = {_path(o.url): (o.props or {}).get("{DAV:}getetag", "") for o in result.objects}
        if full:
            to_fetch, deleted = listing_diff(known, listed)
        else:
            deleted = [_path(u) for u in result.deleted_urls]
            known_n = {normalize_href(h): e for h, e in known.items()}
            to_fetch = [
                h for h, e in listed.items() if not e or known_n.get(normalize_href(h)) != e
            ]
        yield from self._fetch(
            calendar, to_fetch, deleted, Cursor(sync_token=str(result.sync_token or ""), ctag=ctag)
        )

    def _sync_collection(self, collection, token: str):
        try:
            return collection.get_objects_by_sync_token(
                sync_token=token or None, load_objects=False, disable_fallback=True
            )
        except caldav_error.AuthorizationError as exc:
            if SYNC_TOKEN_INVALID in getattr(exc, "preconditions", []):
                raise caldav_error.ReportError("invalid sync token") from exc
            raise AuthError("The CalDAV server refused the username or password.") from exc
        except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError) as exc:
            raise TransientError(f"Cannot reach the CalDAV server at {self._host()}.") from exc

    def _changes_by_listing(self, calendar, *, cursor, known, ctag) -> Iterator[ChangeBatch]:
        """Servers without sync-collection: the ctag says whether anything changed at all."""
        if ctag and ctag == cursor.ctag:
            yield ChangeBatch(cursor=Cursor(ctag=ctag))
            return
        tree = self._multistatus(calendar.remote_id, "PROPFIND", ETAG_LIST_BODY, "1")
        listed = {}
        for resp in tree.findall("d:response", NS):
            prop = _ok_prop(resp)
            href = resp.findtext("d:href", namespaces=NS)
            if (
                prop is None
                or href is None
                or prop.find("d:resourcetype/d:collection", NS) is not None
            ):
                continue
            listed[_path(urljoin(calendar.remote_id, href))] = (
                prop.findtext("d:getetag", namespaces=NS) or ""
            ).strip()
        to_fetch, deleted = listing_diff(known, listed)
        yield from self._fetch(calendar, to_fetch, deleted, Cursor(ctag=ctag))

    def _fetch(
        self, calendar, hrefs: list[str], deleted: list[str], cursor: Cursor
    ) -> Iterator[ChangeBatch]:
        size = settings.CALY_SYNC_BATCH_SIZE
        chunks = [hrefs[i : i + size] for i in range(0, len(hrefs), size)] or [[]]
        for number, chunk in enumerate(chunks):
            batch = self._multiget(calendar, chunk) if chunk else ChangeBatch()
            if number == 0:
                batch.deleted_hrefs = list(deleted)
            if number == len(chunks) - 1:
                batch.cursor = cursor
            yield batch

    def _multiget(self, calendar: RemoteCalendar, hrefs: list[str]) -> ChangeBatch:
        body = (
            MULTIGET_HEAD
            + "".join(f"<d:href>{_xml_escape(h)}</d:href>" for h in hrefs)
            + "</c:calendar-multiget>"
        )
        # RFC 4791 §7.9: no Depth header on calendar-multiget.
        tree = self._multistatus(calendar.remote_id, "REPORT", body, None)
        batch = ChangeBatch()
        for resp in tree.findall("d:response", NS):
            href = resp.findtext("d:href", namespaces=NS)
            prop = _ok_prop(resp)
            if href is None or prop is None:
                continue  # gone between listing and fetching; the next sync reports the deletion
            href = _path(urljoin(calendar.remote_id, href))
            raw = prop.findtext("c:calendar-data", namespaces=NS) or ""
            etag = (prop.findtext("d:getetag", namespaces=NS) or "").strip()
            try:
                events = parse_object(raw, default_timezone=calendar.timezone)
            except MalformedObject as exc:
                batch.skipped.append(SkippedObject(href=href, reason=str(exc)[:300]))
                continue
            batch.objects.append(RemoteObject(href=href, etag=etag, events=events, raw=raw))
        return batch


def _ok_prop(response) -> etree._Element | None:
    for propstat in response.findall("d:propstat", NS):
        status = propstat.findtext("d:status", namespaces=NS) or ""
        if " 200 " in f"{status} ":
            return propstat.find("d:prop", NS)
    return None


def _path(url) -> str:
    return urlsplit(str(url)).path


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtimezone_id(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("TZID:"):
            return line[5:].strip()
    return ""
