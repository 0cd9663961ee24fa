"""The DAV side of CalDAV: the XML Caly sends (PROPFIND, sync-collection, calendar-query,
calendar-multiget) and the streamed parsing of the multistatus answers, into plain items."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import niquests
from django.conf import settings
from lxml import etree

from sync import http
from sync.backoff import retry_after_seconds
from sync.providers.base import AuthError, ProviderError, TransientError

logger = logging.getLogger(__name__)

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CS = "http://calendarserver.org/ns/"
ICAL = "http://apple.com/ns/ical/"
NS = {"d": DAV, "c": CALDAV, "cs": CS, "ic": ICAL}
RESPONSE = f"{{{DAV}}}response"
MULTISTATUS = f"{{{DAV}}}multistatus"
SYNC_TOKEN = f"{{{DAV}}}sync-token"

# No getctag or sync-token here: servers such as Radicale hash every object to compute them,
# which would cost each sync of each calendar that much again before it even starts.
CALENDAR_LIST_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"
            xmlns:ic="http://apple.com/ns/ical/">
  <d:prop><d:resourcetype/><d:displayname/><ic:calendar-color/><c:calendar-timezone/>
    <c:supported-calendar-component-set/><d:supported-report-set/></d:prop>
</d:propfind>"""

CTAG_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/">
  <d:prop><cs:getctag/><d:getetag/></d:prop></d:propfind>"""

ETAG_LIST_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:resourcetype/></d:prop></d:propfind>"""

# No DAV:limit: Xandikos truncates to it without the 507 that would tell us to continue.
SYNC_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:sync-collection xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>
  <d:prop><d:getetag/>{data}</d:prop>
</d:sync-collection>"""

QUERY_BODY = """<?xml version="1.0" encoding="utf-8"?>
<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:prop><d:getetag/><c:calendar-data/></d:prop>
  <c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"/></c:comp-filter>
  </c:filter>
</c:calendar-query>"""

MULTIGET_HEAD = """<?xml version="1.0" encoding="utf-8"?>
<c:calendar-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:prop><d:getetag/><c:calendar-data/></d:prop>"""

# A server answering 507 forever with the same token would otherwise keep us here.
MAX_CONTINUATIONS = 10_000
AUTH_REFUSED = "The CalDAV server refused the username or password."


class SyncReportFailed(ProviderError):
    """sync-collection did not work with this token (or at all): list everything instead."""


class EmptyListingRefused(ProviderError):
    """A calendar that holds events listed as empty without the server confirming it."""


@dataclass
class Item:
    """One `DAV:response` of a multistatus, reduced to what syncing needs."""

    href: str
    status: int  # the response-level status; 200 when the response carries propstats
    etag: str = ""
    data: str | None = None  # calendar-data, if asked for and sent
    is_collection: bool = False
    props: etree._Element | None = None
    is_self: bool = False  # the response is about the requested collection itself


@dataclass
class Listing:
    """hrefs → etags from a sync-collection or PROPFIND, and what the server said is gone."""

    changed: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    token: str = ""


@dataclass
class CalendarInfo:
    # True/False from supported-report-set; None when the server did not say (we try it).
    supports_sync: bool | None


def _status_code(text: str | None) -> int:
    parts = (text or "").split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


HREF, STATUS, PROPSTAT, PROP = (f"{{{DAV}}}{n}" for n in ("href", "status", "propstat", "prop"))
GETETAG, RESOURCETYPE = f"{{{DAV}}}getetag", f"{{{DAV}}}resourcetype"
CALENDAR_DATA = f"{{{CALDAV}}}calendar-data"


def _item(element) -> Item | None:
    # Plain child loops rather than XPath: this runs once per object of a calendar.
    href = status_text = prop = None
    for child in element:
        tag = child.tag
        if tag == HREF:
            href = child.text
        elif tag == STATUS:
            status_text = child.text
        elif tag == PROPSTAT and prop is None:
            propstat_status, propstat_prop = None, None
            for part in child:
                if part.tag == STATUS:
                    propstat_status = part.text
                elif part.tag == PROP:
                    propstat_prop = part
            if _status_code(propstat_status) == 200:
                prop = propstat_prop
    if href is None:
        return None
    href = href.strip()
    if status_text is not None:
        return Item(href=href, status=_status_code(status_text))
    if prop is None:
        return Item(href=href, status=404)
    item = Item(href=href, status=200, props=prop)
    for value in prop:
        tag = value.tag
        if tag == GETETAG:
            item.etag = (value.text or "").strip()
        elif tag == CALENDAR_DATA:
            item.data = value.text or ""
        elif tag == RESOURCETYPE:
            item.is_collection = value.find(f"{{{DAV}}}collection") is not None
    return item


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtimezone_id(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("TZID:"):
            return line[5:].strip()
    return ""


class Multistatus:
    """A 207 answer parsed while it streams: iterate its responses, then read its sync token.

    Each response element is dropped once read, so memory stays at one response however many
    the server sends.
    """

    def __init__(self, response, url: str):
        self._response = response
        self.url = url
        self._path = urlsplit(url).path.rstrip("/")
        self._unquoted_path = unquote(self._path)
        self.token = ""
        self.truncated = False

    def __iter__(self) -> Iterator[Item]:
        parser = etree.XMLPullParser(
            events=("end",),
            tag=(RESPONSE, SYNC_TOKEN),
            resolve_entities=False,
            no_network=True,
            huge_tree=True,
        )
        try:
            for chunk in self._response.iter_content(chunk_size=256 * 1024):
                if chunk:
                    parser.feed(chunk)
                    yield from self._drain(parser)
            parser.close()
            yield from self._drain(parser)
        except etree.XMLSyntaxError as exc:
            raise ProviderError(
                f"The CalDAV server sent invalid XML for {urlsplit(self.url).path}."
            ) from exc
        except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError) as exc:
            raise TransientError(
                f"The CalDAV server stopped answering while sending {urlsplit(self.url).path}."
            ) from exc
        finally:
            self._response.close()

    def _drain(self, parser) -> Iterator[Item]:
        for _, element in parser.read_events():
            parent = element.getparent()
            if element.tag == SYNC_TOKEN and parent is not None and parent.tag == MULTISTATUS:
                self.token = (element.text or "").strip()
            elif element.tag == RESPONSE:
                item = _item(element)
                element.clear()
                if parent is not None:
                    parent.remove(element)
                if item is None:
                    continue
                # Servers send absolute URLs or paths, `%40` or `@`: keep the path as spelled.
                href = item.href
                if href[:1] != "/" or href[:2] == "//" or "?" in href or "#" in href:
                    item.href = urlsplit(urljoin(self.url, item.href)).path
                bare = item.href.rstrip("/")
                item.is_self = bare == self._path or (
                    "%" in bare + self._path and unquote(bare) == self._unquoted_path
                )
                # RFC 6578 §3.6: a 507 on the collection itself means "more to come".
                if item.status == 507 and item.is_self:
                    self.truncated = True
                    continue
                yield item


class CollectionGone(ProviderError):
    """The collection is not (or no longer) at that address."""


class DAVSession:
    """The HTTP side of one account's DAV requests: the shared pooled session, its timeout, Basic
    auth sent up front (Digest when the server asks for it only), errors mapped to Caly's kinds."""

    def __init__(self, *, url: str, username: str, password: str):
        self.url, self.username, self.password = url, username, password
        self._auth = self._initial_auth()

    def _initial_auth(self):
        if not (self.username or self.password):
            return None
        # Sent up front: asking anonymously first costs a round trip per sync, and Radicale
        # answers anonymous requests only after a deliberate delay.
        return niquests.auth.HTTPBasicAuth(self.username, self.password)

    def host(self) -> str:
        return urlsplit(self.url).netloc.rpartition("@")[2] or self.url

    def send(self, method: str, url: str, body: str, *, depth: str | None):
        """One request through the shared session, streamed; errors mapped to Caly's kinds."""
        headers = {"Content-Type": "application/xml; charset=utf-8"}
        if depth is not None:
            headers["Depth"] = depth
        for _attempt in range(2):
            try:
                response = http.session().request(
                    method,
                    url,
                    data=body.encode(),
                    headers=headers,
                    auth=self._auth,
                    timeout=settings.CALY_HTTP_TIMEOUT,
                    stream=True,
                    allow_redirects=False,
                )
            except niquests.exceptions.Timeout as exc:
                raise TransientError(
                    f"The CalDAV server at {self.host()} did not answer in time."
                ) from exc
            except niquests.exceptions.ConnectionError as exc:
                raise TransientError(
                    f"Cannot connect to the CalDAV server at {self.host()}."
                ) from exc
            challenge = response.headers.get("WWW-Authenticate", "").lower()
            if (
                response.status_code == 401
                and "digest" in challenge
                and "basic" not in challenge
                and not isinstance(self._auth, niquests.auth.HTTPDigestAuth)
                and self._auth is not None
            ):
                response.close()
                self._auth = niquests.auth.HTTPDigestAuth(self.username, self.password)
                continue
            break
        status = response.status_code
        if status == 401 or (status == 403 and method != "REPORT"):
            response.close()
            raise AuthError(AUTH_REFUSED)
        if status in (429, 503) or (status >= 500 and status != 507):
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            response.close()
            raise TransientError(
                f"The CalDAV server at {self.host()} answered HTTP {status}.",
                retry_after=retry_after,
            )
        return response

    def multistatus(self, method: str, url: str, body: str, *, depth: str | None) -> Multistatus:
        response = self.send(method, url, body, depth=depth)
        if response.status_code != 207:
            status = response.status_code
            response.close()
            error = CollectionGone if status in (404, 410) else ProviderError
            raise error(f"{method} {urlsplit(url).path} answered HTTP {status}, expected 207.")
        return Multistatus(response, url)
