"""A small HTTP proxy in front of a real CalDAV server, to make it behave like harder servers.

It forwards every request on loopback and can, per test:
- count requests (method, path, REPORT kind), for request-budget assertions;
- hide sync-collection (no report in supported-report-set, no sync-token) and refuse the REPORT,
  like servers without RFC 6578; or only refuse it while still advertising it;
- reject every sync token (as an expired token is rejected: 403 `valid-sync-token`);
- truncate sync-collection answers to `page_size` responses with the RFC 6578 §3.6 507 marker
  and a continuation token, like servers with result limits;
- answer listings of one calendar with no members at all (a spurious empty answer);
- leave one calendar out of the calendar home's listing (a server's hiccup);
- serve some objects' calendar-data broken (a server handing out what it should not);
- refuse REPORTs that ask for calendar-data of the whole collection (sync-collection,
  calendar-query) with 400, as Radicale does past 10,000 VEVENTs in one answer;
- answer sync-collection with nothing but a 507 and a new token, every time (a listing that
  never ends);
- cut the PROPFIND listing of one calendar short, with a 507 on the collection;
- leave objects out of calendar-multiget answers: some always, or all past the first few;
- answer sync-collection with hostile XML streamed for as long as it is read, noting the test
  process's resident memory (VmRSS) at every chunk it sends;
- be slow: answer REPORTs for the whole calendar (sync-collection without a token,
  calendar-query) only after some seconds, and calendar-multiget after some time per object
  asked for, as a busy server with a large calendar does.
"""

from __future__ import annotations

import base64
import itertools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import requests
from lxml import etree

from tests.support.ports import free_port

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
BROKEN = (
    "BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nUID:broken\nDTSTART:2026XX05T0900Z\nEND:VEVENT\n"
)
PAGE_TOKEN = "http://caly.invalid/page/"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "server",
    "date",
}
REFUSED = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:error xmlns:D="DAV:"><D:supported-report/></D:error>'
)
TOKEN_REJECTED = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>'
)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    report: str = ""  # sync-collection, calendar-multiget, calendar-query
    hrefs: int = 0  # how many objects a calendar-multiget asked for
    slowed: bool = False  # a request for the whole calendar, answered late (`slow_whole_calendar`)


@dataclass
class DAVProxy:
    upstream: str
    hide_sync: bool = False
    refuse_sync: bool = False
    reject_tokens: bool = False
    page_size: int = 0
    empty_listing_of: str = ""  # a calendar path: its listings come back without members
    unlisted: str = ""  # a calendar path left out of its calendar home's listing
    corrupt: set[str] = field(default_factory=set)  # object paths served as broken iCalendar
    refuse_bulk_data: bool = False
    endless: bool = False  # sync-collection: only a 507 and a new token, every time
    cut_listing_of: str = ""  # a calendar path: its PROPFIND Depth 1 lists one object, then 507
    withhold: set[str] = field(default_factory=set)  # object paths multigets leave out
    multiget_limit: int = 0  # objects a multiget answer holds at most (0: all)
    hostile_xml: str = ""  # a shape of HOSTILE, sent for sync-collection
    rss_kib: list[int] = field(default_factory=list)  # VmRSS at each chunk of hostile XML
    slow_whole_calendar: float = 0.0  # seconds before answering for the whole calendar
    multiget_seconds: float = 0.0  # seconds per object a calendar-multiget asks for
    requests: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _halt: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        self.hide_sync = self.refuse_sync = self.reject_tokens = False
        self.page_size = 0
        self.empty_listing_of = self.unlisted = ""
        self.corrupt = set()
        self.refuse_bulk_data = self.endless = False
        self.cut_listing_of = self.hostile_xml = ""
        self.withhold = set()
        self.multiget_limit = 0
        self.slow_whole_calendar = self.multiget_seconds = 0.0
        self.rss_kib.clear()
        self.requests.clear()

    def start(self) -> DAVProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, content = proxy._handle(
                    self.command, self.path, self.headers, body
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(content, bytes):
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    try:
                        self.wfile.write(content)
                    except OSError:  # the client gave up waiting
                        self.close_connection = True
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in content:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client stopped reading
                    self.close_connection = True

            do_GET = do_PUT = do_DELETE = do_PROPFIND = do_PROPPATCH = do_REPORT = handle_one
            do_MKCALENDAR = do_MKCOL = do_OPTIONS = do_HEAD = do_POST = handle_one

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def count(self, method: str | None = None, report: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and (report is None or r.report == report)
        )

    # --- the proxying ------------------------------------------------------------------
    def _handle(self, method: str, path: str, headers, body: bytes):
        report = ""
        if method == "REPORT":
            match = re.search(
                rb"<(?:\w+:)?(sync-collection|calendar-multiget|calendar-query)\b", body
            )
            report = match.group(1).decode() if match else "other"
        hrefs = len(re.findall(rb"<(?:\w+:)?href>", body)) if report == "calendar-multiget" else 0
        whole = report == "calendar-query" or (
            report == "sync-collection" and not _request_token(body)
        )
        delay = (self.slow_whole_calendar if whole else 0.0) + self.multiget_seconds * hrefs
        slowed = whole and self.slow_whole_calendar > 0
        self.requests.append(Seen(method, urlsplit(path).path, report, hrefs, slowed=slowed))
        if delay:
            self._halt.wait(delay)  # a slow server, not the test waiting for something
        if report == "sync-collection" and (self.hide_sync or self.refuse_sync):
            return 403, {"Content-Type": "application/xml; charset=utf-8"}, REFUSED
        if (
            self.refuse_bulk_data
            and report in ("sync-collection", "calendar-query")
            and b"calendar-data" in body
        ):
            return 400, {"Content-Type": "text/plain"}, b"REPORT occurrences limit hit"
        if report == "sync-collection" and self.hostile_xml:
            return 207, {"Content-Type": "application/xml; charset=utf-8"}, self._hostile()
        if report == "sync-collection" and self.endless:
            number = len(self.requests)
            return 207, {"Content-Type": "application/xml; charset=utf-8"}, _endless(path, number)
        token = _request_token(body) if report == "sync-collection" else ""
        if token and self.reject_tokens:
            return 403, {"Content-Type": "application/xml; charset=utf-8"}, TOKEN_REJECTED
        offset = 0
        if token.startswith(PAGE_TOKEN):
            offset, original = _decode_page_token(token)
            body = body.replace(_xml_text(token), _xml_text(original))
            token = original
        forwarded = {
            k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")
        }
        upstream = requests.request(
            method, self.upstream + path, data=body, headers=forwarded, timeout=60
        )
        content = upstream.content
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if upstream.status_code == 207:
            depth = headers.get("Depth", "")
            content = self._rewrite(method, path, report, token, offset, content, depth)
        return upstream.status_code, out_headers, content

    def _hostile(self) -> Iterator[bytes]:
        for chunk in HOSTILE[self.hostile_xml]():
            self.rss_kib.append(rss_kib())
            if self.rss_kib[-1] - self.rss_kib[0] > 512 * 1024:
                return  # enough to fail the test; spare the machine
            yield chunk

    def _rewrite(self, method, path, report, token, offset, content: bytes, depth="") -> bytes:
        path = urlsplit(path).path
        hide = self.hide_sync and method == "PROPFIND"
        empty = self.empty_listing_of and _same(path, self.empty_listing_of)
        paging = self.page_size and report == "sync-collection"
        corrupt = self.corrupt and method == "REPORT"
        unlisted = self.unlisted and method == "PROPFIND"
        cut = (
            self.cut_listing_of
            and method == "PROPFIND"
            and depth == "1"
            and _same(path, self.cut_listing_of)
        )
        multiget = (self.withhold or self.multiget_limit) and report == "calendar-multiget"
        if not (hide or empty or paging or corrupt or unlisted or cut or multiget):
            return content
        root = etree.fromstring(content)
        if multiget:
            sent = 0
            for response in root.findall(f"{DAV}response"):
                href = response.findtext(f"{DAV}href")
                if any(_same(href, w) for w in self.withhold) or (
                    self.multiget_limit and sent >= self.multiget_limit
                ):
                    root.remove(response)
                else:
                    sent += 1
        if unlisted:
            for response in root.findall(f"{DAV}response"):
                if _same(response.findtext(f"{DAV}href"), self.unlisted):
                    root.remove(response)
        if corrupt:
            for response in root.findall(f"{DAV}response"):
                if any(_same(response.findtext(f"{DAV}href"), c) for c in self.corrupt):
                    for data in response.iter(f"{CALDAV}calendar-data"):
                        data.text = BROKEN
        if hide:
            for report_el in root.iter(f"{DAV}sync-collection"):
                supported = report_el.getparent().getparent()
                supported.getparent().remove(supported)
            for token_el in list(root.iter(f"{DAV}sync-token")):
                if token_el.getparent().tag == f"{DAV}prop":
                    token_el.getparent().remove(token_el)
        members = [
            r for r in root.findall(f"{DAV}response") if not _same(r.findtext(f"{DAV}href"), path)
        ]
        if empty and (method == "PROPFIND" or report == "sync-collection"):
            for member in members:
                root.remove(member)
        elif cut:
            for member in members[1:]:
                root.remove(member)
            marker = etree.SubElement(root, f"{DAV}response")
            etree.SubElement(marker, f"{DAV}href").text = path
            etree.SubElement(marker, f"{DAV}status").text = "HTTP/1.1 507 Insufficient Storage"
        elif paging:
            rest = members[offset + self.page_size :]
            for member in members[:offset] + rest:
                root.remove(member)
            if rest:
                marker = etree.SubElement(root, f"{DAV}response")
                etree.SubElement(marker, f"{DAV}href").text = path
                etree.SubElement(marker, f"{DAV}status").text = "HTTP/1.1 507 Insufficient Storage"
                root.find(f"{DAV}sync-token").text = _page_token(offset + self.page_size, token)
                # The marker must come before the token element, as servers send it.
                token_el = root.find(f"{DAV}sync-token")
                root.remove(token_el)
                root.append(token_el)
        return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def rss_kib() -> int:
    """This process's resident memory, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _endless(path: str, number: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<d:multistatus xmlns:d="DAV:"><d:response>'
        f"<d:href>{path}</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status>"
        f"</d:response><d:sync-token>{PAGE_TOKEN}endless-{number}</d:sync-token></d:multistatus>"
    ).encode()


# Hostile multistatus answers, each about 48 MiB unless the reader gives up sooner.
HEAD = b'<?xml version="1.0" encoding="utf-8"?>\n<d:multistatus xmlns:d="DAV:">'
OPEN_RESPONSE = b"<d:response><d:href>/x.ics</d:href><d:propstat><d:prop>"
MIB = 2**20


def _repeat(start: bytes, unit: bytes, mib: int = 48) -> Iterator[bytes]:
    yield start
    chunk = unit * (64 * 1024 // len(unit) or 1)
    for _ in range(mib * MIB // len(chunk)):
        yield chunk


HOSTILE = {
    # ~12 million empty siblings of the responses (the 30 MiB of <a/>, and more)
    "siblings": lambda: _repeat(HEAD, b"<a/>"),
    # the same inside one response
    "inside": lambda: _repeat(HEAD + OPEN_RESPONSE, b"<a/>"),
    # elements nested ever deeper, each with 64 KiB of text
    "deep": lambda: _repeat(HEAD, b"<a>" + b"x" * (64 * 1024)),
    # one calendar object of 48 MiB
    "text": lambda: _repeat(HEAD + OPEN_RESPONSE + b"<c:calendar-data xmlns:c='x'>", b"y" * 1024),
    # comments between the responses
    "comments": lambda: _repeat(HEAD, b"<!--x-->"),
    # one start tag with ever more attributes of 1 MiB
    "attributes": lambda: itertools.chain(
        [HEAD, b"<a "], (b'a%d="%s" ' % (i, b"v" * MIB) for i in range(48))
    ),
}


def _same(href: str | None, path: str) -> bool:
    return unquote(urlsplit(href or "").path).rstrip("/") == unquote(path).rstrip("/")


def _request_token(body: bytes) -> str:
    match = re.search(rb"<(?:\w+:)?sync-token>([^<]*)</", body)
    return _unescape(match.group(1).decode()) if match else ""


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _xml_text(text: str) -> bytes:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").encode()


def _page_token(offset: int, original: str) -> str:
    encoded = base64.urlsafe_b64encode(original.encode()).decode() or "-"
    return f"{PAGE_TOKEN}{offset}/{encoded}"


def _decode_page_token(token: str) -> tuple[int, str]:
    offset, _, encoded = token[len(PAGE_TOKEN) :].partition("/")
    original = "" if encoded == "-" else base64.urlsafe_b64decode(encoded.encode()).decode()
    return int(offset), original
