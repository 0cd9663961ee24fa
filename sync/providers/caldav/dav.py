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
from niquests.packages.urllib3.exceptions import ReadTimeoutError

from sync import http
from sync.backoff import retry_after_seconds
from sync.providers.base import AuthError, ProviderError, TimedOut, TransientError

logger = logging.getLogger(__name__)

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CS = "http://calendarserver.org/ns/"
ICAL = "http://apple.com/ns/ical/"
NS = {"d": DAV, "c": CALDAV, "cs": CS, "ic": ICAL}
RESPONSE = f"{{{DAV}}}response"
MULTISTATUS = f"{{{DAV}}}multistatus"
SYNC_TOKEN = f"{{{DAV}}}sync-token"

# No getctag or sync-token unless a calendar syncs by ctag: servers such as Radicale hash every
# object to compute them, which would cost each sync of each calendar that much again before it
# even starts. A calendar that syncs by ctag (no sync-collection, or refused) gets its ctag here,
# which saves it a PROPFIND of its own.
CALENDAR_LIST_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"
            xmlns:ic="http://apple.com/ns/ical/" xmlns:cs="http://calendarserver.org/ns/">
  <d:prop><d:resourcetype/><d:displayname/><ic:calendar-color/><c:calendar-timezone/>
    <c:supported-calendar-component-set/><d:supported-report-set/>
    <d:current-user-privilege-set/>{ctag}</d:prop>
</d:propfind>"""
CALENDAR_LIST_CTAG = "<cs:getctag/><d:getetag/>"

CTAG_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/">
  <d:prop><cs:getctag/><d:getetag/></d:prop></d:propfind>"""

# The collection's own sync token comes with it (RFC 6578 §4), for a sync that lists by PROPFIND.
ETAG_LIST_BODY = """<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:resourcetype/><d:sync-token/></d:prop>
</d:propfind>"""

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

# A server answering 507 with a new token every time would otherwise keep a sync asking for
# ever; a server that really pages its answers sends far fewer pages than this.
MAX_CONTINUATIONS = 1_000
# The most objects one calendar listing may hold (hrefs and etags are kept until it is
# complete): a listing of a calendar this size takes some 35 MB.
MAX_LISTED_OBJECTS = 100_000
MAX_CALENDARS = 1_000  # in one calendar home

# Bounds on one multistatus answer, so that whatever a server sends, parsing it holds a few MiB
# (every finished element is freed as soon as it is read): nesting (a calendar's properties go
# 8 levels deep), elements in one response (a calendar's properties take about 50), elements in
# the whole answer (7 per object: a calendar of 250,000 objects), and the bytes of one response
# (one calendar object with its properties: a 10 MB event fits).
MAX_DEPTH = 32
MAX_RESPONSE_ELEMENTS = 10_000
MAX_ELEMENTS = 1_000_000
MAX_RESPONSE_BYTES = 16 * 2**20
READ_CHUNK = 64 * 1024
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
    truncated: bool = False  # the server cut it short (507): it says nothing of what it left out

    def record(self, item: Item, url: str) -> None:
        """Add one `<response>` of a listing of `url`: changed, or gone (404)."""
        if item.status == 404:
            self.changed.pop(item.href, None)
            self.deleted.append(item.href)
        elif item.status == 200 and not item.is_collection and not item.is_self:
            self.changed[item.href] = item.etag
            if self.deleted and item.href in self.deleted:
                self.deleted.remove(item.href)
        bound_listing(len(self.changed) + len(self.deleted), url)


def bound_listing(count: int, url: str) -> None:
    """Listings are held until complete: one of a calendar beyond any real size is refused."""
    if count > MAX_LISTED_OBJECTS:
        raise ProviderError(
            f"{urlsplit(url).path} lists more than {MAX_LISTED_OBJECTS:,} objects; Caly syncs "
            "calendars up to that size."
        )


@dataclass
class CalendarInfo:
    # True/False from supported-report-set; None when the server did not say (we try it).
    supports_sync: bool | None
    ctag: str | None = None  # from the calendar list, when it was asked for there


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


def sync_token_of(item: Item) -> str:
    """The DAV:sync-token property of a collection's own PROPFIND response ("" if none)."""
    token = item.props.find(f"{{{DAV}}}sync-token") if item.props is not None else None
    return (token.text or "").strip() if token is not None else ""


def _timed_out(exc: Exception) -> bool:
    """A read timeout while a body streams comes as a ConnectionError wrapping it."""
    return isinstance(exc, niquests.exceptions.Timeout) or any(
        isinstance(arg, ReadTimeoutError) for arg in exc.args
    )


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtimezone_id(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("TZID:"):
            return line[5:].strip()
    return ""


class Multistatus:
    """A 207 answer parsed while it streams: iterate its responses, then read its sync token.

    Only the response being read is kept, as a small tree, and dropped once it is turned into
    an item; anything else the server sends is read past without being kept. The answer is held
    to the bounds above, so memory stays at one response whatever the server sends.
    """

    def __init__(self, response, url: str):
        self._response = response
        self.url = url
        self._path = urlsplit(url).path.rstrip("/")
        self._unquoted_path = unquote(self._path)
        self.token = ""
        self.truncated = False

    def __iter__(self) -> Iterator[Item]:
        reader = _Reader(self)
        # A parser target of our own rather than lxml's tree: nothing outside the response being
        # read is kept, and a 10 MB calendar object parses without huge_tree (which would lift
        # libxml2's limits on nesting, names and entity expansion too).
        parser = etree.XMLParser(target=reader, resolve_entities=False, no_network=True)
        fed = 0
        try:
            for chunk in self._response.iter_content(chunk_size=READ_CHUNK):
                if chunk:
                    reader.fed = fed
                    parser.feed(chunk)
                    fed += len(chunk)
                    yield from self._items(reader)
                    if fed - reader.mark > MAX_RESPONSE_BYTES:  # one tag that never ends
                        raise self.refused(f"sent more than {MAX_RESPONSE_BYTES // 2**20} MiB")
            parser.close()
            yield from self._items(reader)
        except etree.XMLSyntaxError as exc:
            raise ProviderError(
                f"The CalDAV server sent invalid XML for {urlsplit(self.url).path}."
            ) from exc
        except (niquests.exceptions.Timeout, niquests.exceptions.ConnectionError) as exc:
            error = TimedOut if _timed_out(exc) else TransientError
            raise error(
                f"The CalDAV server stopped answering while sending {urlsplit(self.url).path}."
            ) from exc
        finally:
            self._response.close()

    def refused(self, what: str) -> ProviderError:
        return ProviderError(
            f"The CalDAV server {what} in its answer for {urlsplit(self.url).path}; "
            "Caly does not read such answers."
        )

    def _items(self, reader: _Reader) -> Iterator[Item]:
        finished, reader.finished = reader.finished, []
        for element in finished:
            item = _item(element)
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


class _Reader:
    """The parser's target: builds the `DAV:response` being read (and the sync token), counts
    everything else against the bounds and keeps none of it."""

    def __init__(self, answer: Multistatus):
        self.answer = answer
        self.finished: list[etree._Element] = []  # responses read since the last feed
        self.fed = 0  # bytes fed before the current chunk
        self.mark = 0  # where the parser last got as far as a tag or text
        self._depth = self._elements = self._in_response = self._size = 0
        self._open: list[etree._Element] = []  # the response being read, and its open elements
        self._text: list[str] = []
        self._root = ""
        self._token: list[str] | None = None

    def start(self, tag, attrib, nsmap=None):
        self.mark = self.fed
        self._depth += 1
        self._elements += 1
        if self._depth > MAX_DEPTH:
            raise self.answer.refused(f"nested XML more than {MAX_DEPTH} levels deep")
        if self._elements > MAX_ELEMENTS:
            raise self.answer.refused(f"sent more than {MAX_ELEMENTS:,} XML elements")
        self._text.clear()  # text before a child element is only layout
        if self._open:
            self._in_response += 1
            if self._in_response > MAX_RESPONSE_ELEMENTS:
                raise self.answer.refused(
                    f"sent more than {MAX_RESPONSE_ELEMENTS:,} XML elements for one object"
                )
            element = etree.SubElement(self._open[-1], tag)
            if attrib:
                element.attrib.update(attrib)
            self._open.append(element)
        elif self._depth == 1:
            self._root = tag
        elif self._depth == 2 and self._root == MULTISTATUS:
            if tag == RESPONSE:
                self._open.append(etree.Element(tag))
                self._in_response = 1
                self._size = 0
            elif tag == SYNC_TOKEN:
                self._token = []
                self._size = 0

    def data(self, text):
        self.mark = self.fed
        if self._open or self._token is not None:  # elsewhere text is only layout
            self._size += len(text)
            if self._size > MAX_RESPONSE_BYTES:
                raise self.answer.refused(
                    f"sent more than {MAX_RESPONSE_BYTES // 2**20} MiB for one object"
                )
            self._text.append(text)

    def end(self, tag):
        self.mark = self.fed
        self._depth -= 1
        if self._open:
            element = self._open.pop()
            if self._text and not len(element):
                element.text = "".join(self._text)
            if not self._open:
                self.finished.append(element)
        elif self._token is not None:
            self.answer.token = "".join(self._text).strip()
            self._token = None
        self._text.clear()

    def close(self):
        return None


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

    def send(self, method: str, url: str, body: str, *, depth: str | None, headers=None):
        """One request through the shared session, streamed; errors mapped to Caly's kinds.

        A 403 to a write (PUT, DELETE) is the calendar's refusal, not the account's: it is
        answered to the caller."""
        headers = {"Content-Type": "application/xml; charset=utf-8", **(headers or {})}
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
                raise TimedOut(
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
        if status == 401 or (status == 403 and method not in ("REPORT", "PUT", "DELETE")):
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
