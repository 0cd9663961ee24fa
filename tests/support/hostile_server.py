"""A small CalDAV server on loopback that misbehaves on demand, for the tests of Caly's defences.

It speaks just enough CalDAV to be connected and synced (principal, calendar home, one calendar
"Work" with sync-collection and calendar-multiget) and can be told to misbehave on one kind of
request: invalid XML, a body that never ends or trickles a byte at a time, a status line and
headers trickled a byte at a time, no answer at all, a redirect loop, a redirect elsewhere, a huge
Content-Length, a body that does not decompress, broken chunked encoding. It records every
request it gets,
so a test can also prove that Caly never contacted it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PRINCIPAL = "/principal/"
HOME = "/calendars/"
CALENDAR = "/calendars/work/"

BEHAVIOURS = (
    "invalid_xml",  # 207 whose body is not XML
    "endless",  # a 207 body streamed at full speed, forever
    "trickle",  # a 207 body, one byte every 0.1 s, forever
    "hang",  # reads the request, never answers
    "redirect_loop",  # 308 to itself, forever
    "redirect",  # 307 to `target` + the same path
    "huge_length",  # announces a 1 GiB body
    "echo_credentials",  # asks for Basic auth, then answers non-XML quoting the credentials
    "slow_headers",  # the right answer, its status line and headers one byte every 0.1 s
    "bad_gzip",  # a 207 marked gzip whose body is not gzip
    "broken_chunked",  # a 207 whose chunked encoding breaks after the first chunk
)
# How long "slow_headers" takes over the status line and headers before the body follows.
SLOW_HEADERS_SECONDS = 20
# Which requests a misbehaviour applies to.
KINDS = ("principal", "calendars", "sync", "multiget", "other", "any")


def _etag(text: str) -> str:
    return '"' + hashlib.sha1(text.encode()).hexdigest()[:16] + '"'


def _multistatus(responses: str, extra: str = "") -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" '
        'xmlns:cs="http://calendarserver.org/ns/">'
        f"{responses}{extra}</d:multistatus>"
    )


def _response(href: str, props: str) -> str:
    return (
        f"<d:response><d:href>{escape(href)}</d:href><d:propstat><d:prop>{props}</d:prop>"
        "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
    )


class HostileCalDAV:
    def __init__(self, host: str = "127.0.0.1"):
        self.objects: dict[str, str] = {}
        # What discovery finds: the calendar home, and the calendars listed in it (href → name;
        # the objects above are served as those of "Work" whatever the calendar's href).
        self.home = HOME
        self.calendars: dict[str, str] = {CALENDAR: "Work"}
        self.behaviour: str | None = None
        self.on = "any"
        self.target = ""
        self.requests: list[tuple[str, str, str]] = []
        self.stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + "/"

    def put(self, name: str, ics: str) -> None:
        self.objects[name] = ics

    def misbehave(self, behaviour: str, *, on: str = "any", target: str = "") -> None:
        assert behaviour in BEHAVIOURS and on in KINDS, (behaviour, on)
        self.behaviour, self.on, self.target = behaviour, on, target

    def behave(self) -> None:
        self.behaviour = None

    def kinds_requested(self) -> list[str]:
        return [kind for _, _, kind in self.requests]

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    # --- what a well-behaved server answers ------------------------------------------------
    def sync_token(self) -> str:
        state = "".join(sorted(_etag(ics) for ics in self.objects.values()))
        return "http://caly.test/sync/" + hashlib.sha1(state.encode()).hexdigest()

    def answer(self, kind: str, path: str, body: str) -> tuple[int, str]:
        if kind == "principal":
            if "calendar-home-set" in body:
                props = (
                    f"<c:calendar-home-set><d:href>{escape(self.home)}</d:href>"
                    "</c:calendar-home-set>"
                )
            else:
                props = (
                    "<d:current-user-principal>"
                    f"<d:href>{PRINCIPAL}</d:href></d:current-user-principal>"
                )
            return 207, _multistatus(_response(path, props))
        if kind == "calendars":
            calendar = (
                "<d:resourcetype><d:collection/><c:calendar/></d:resourcetype>"
                "<d:displayname>{name}</d:displayname>"
                f"<cs:getctag>{escape(self.sync_token())}</cs:getctag>"
                f"<d:sync-token>{escape(self.sync_token())}</d:sync-token>"
                '<c:supported-calendar-component-set><c:comp name="VEVENT"/>'
                "</c:supported-calendar-component-set>"
                "<d:supported-report-set><d:supported-report><d:report><d:sync-collection/>"
                "</d:report></d:supported-report></d:supported-report-set>"
            )
            return 207, _multistatus(
                _response(self.home, "<d:resourcetype><d:collection/></d:resourcetype>")
                + "".join(
                    _response(href, calendar.replace("{name}", escape(name)))
                    for href, name in self.calendars.items()
                )
            )
        if kind == "sync":
            listing = "".join(
                _response(CALENDAR + name, f"<d:getetag>{escape(_etag(ics))}</d:getetag>")
                for name, ics in self.objects.items()
            )
            return 207, _multistatus(
                listing, f"<d:sync-token>{escape(self.sync_token())}</d:sync-token>"
            )
        if kind == "multiget":
            wanted = [h.rpartition("/")[2] for h in re.findall(r"<d:href>([^<]+)</d:href>", body)]
            found = "".join(
                _response(
                    CALENDAR + name,
                    f"<d:getetag>{escape(_etag(self.objects[name]))}</d:getetag>"
                    f"<c:calendar-data>{escape(self.objects[name])}</c:calendar-data>",
                )
                for name in wanted
                if name in self.objects
            )
            return 207, _multistatus(found)
        return 404, ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_PROPFIND(self):
        self._handle()

    def do_REPORT(self):
        self._handle()

    def do_GET(self):
        self._handle()

    def do_OPTIONS(self):
        self._handle()

    def _classify(self, body: str) -> str:
        if self.command == "PROPFIND":
            return "calendars" if self.headers.get("Depth") == "1" else "principal"
        if self.command == "REPORT":
            return "sync" if "sync-collection" in body else "multiget"
        return "other"

    def _handle(self):
        fake: HostileCalDAV = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        kind = self._classify(body)
        fake.requests.append((self.command, self.path, kind))
        self.kind, self.body = kind, body
        if fake.behaviour and fake.on in ("any", kind):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                getattr(self, "_" + fake.behaviour)(fake)
            return
        status, text = fake.answer(kind, self.path, body)
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    # --- misbehaviours -------------------------------------------------------------------
    def _start_chunked(self):
        self.close_connection = True
        self.send_response(207)
        self.send_header("Content-Type", "application/xml; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _invalid_xml(self, fake):
        payload = b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:"><d:response>&&<<'
        self.send_response(207)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _endless(self, fake):
        # One calendar object whose text never ends.
        self._start_chunked()
        self._chunk(
            b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" '
            b'xmlns:c="urn:ietf:params:xml:ns:caldav"><d:response><d:href>/calendars/work/x.ics'
            b"</d:href><d:propstat><d:prop><c:calendar-data>BEGIN:VCALENDAR\r\n"
        )
        block = b"X-FILLER:" + b"y" * 65000 + b"\r\n"
        while not fake.stopping.is_set():
            self._chunk(block)

    def _trickle(self, fake):
        self._start_chunked()
        while not fake.stopping.wait(0.1):
            self._chunk(b" ")

    def _hang(self, fake):
        self.close_connection = True
        fake.stopping.wait()

    def _redirect_loop(self, fake):
        self._send_redirect(self.path, 308)

    def _redirect(self, fake):
        self._send_redirect(fake.target.rstrip("/") + self.path, 307)

    def _send_redirect(self, location: str, status: int):
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _echo_credentials(self, fake):
        credentials = self.headers.get("Authorization")
        if not credentials:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="caly-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = f"<oops>you sent Authorization: {credentials} to {self.path}".encode()
        self.send_response(207)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _slow_headers(self, fake):
        # Each byte comes well within any read timeout; only a limit on the whole wait helps.
        status, text = fake.answer(self.kind, self.path, self.body)
        payload = text.encode()
        head = (
            f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
            "Content-Type: application/xml; charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\n"
        ).encode()
        filler = b"X-Filler: " + b"z" * max(int(SLOW_HEADERS_SECONDS * 10) - len(head), 1)
        for i, byte in enumerate(head + filler + b"\r\n\r\n"):
            if i and fake.stopping.wait(0.1):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
        self.wfile.write(payload)

    def _bad_gzip(self, fake):
        payload = b"this is not gzip at all" * 10
        self.send_response(207)
        self.send_header("Content-Type", "application/xml; charset=utf-8")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _broken_chunked(self, fake):
        self._start_chunked()
        self._chunk(b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">')
        self.wfile.write(b"not-a-chunk-size\r\n<d:response>")
        self.wfile.flush()

    def _huge_length(self, fake):
        self.close_connection = True
        self.send_response(207)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(2**30))
        self.send_header("Connection", "close")
        self.end_headers()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not fake.stopping.is_set():
            self.wfile.write(b" " * 65536)
