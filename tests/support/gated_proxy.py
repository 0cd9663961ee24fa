"""A loopback HTTP proxy in front of a CalDAV server that can hold REPORT requests at a gate.

A sync lists a calendar's changes with REPORT; holding those keeps a sync in its `running` state
for exactly as long as a test needs to look at it, then lets it finish normally. It can also hold
the *answers* to PUTs: the server has applied the write, the writer has not heard back yet (the
moment a worker dying loses the most).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "content-length",
    "host",
    "accept-encoding",
}
METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND", "REPORT", "MKCALENDAR")


class GatedProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self._open = threading.Event()
        self._open.set()
        # With `except_first`, REPORTs to the first collection that gets one pass the gate.
        self._except_first = False
        self._first_collection: str | None = None
        self._lock = threading.Lock()
        self.held = 0  # REPORT requests that have arrived while the gate was closed
        self._answers = threading.Event()
        self._answers.set()
        self.answers_held = 0  # PUTs applied upstream whose answer waits at the gate
        self.session = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "REPORT" and not proxy._open.is_set():
                    with proxy._lock:
                        if proxy._first_collection is None:
                            proxy._first_collection = self.path
                        hold = not (proxy._except_first and self.path == proxy._first_collection)
                        proxy.held += hold
                else:
                    hold = False
                if hold:
                    proxy._open.wait(timeout=60)
                upstream = proxy.session.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP},
                    allow_redirects=False,
                    timeout=30,
                )
                content = upstream.content
                if self.command == "PUT" and not proxy._answers.is_set():
                    with proxy._lock:
                        proxy.answers_held += 1
                    proxy._answers.wait(timeout=60)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            def log_message(self, *args):
                pass

        for method in METHODS:
            setattr(Handler, f"do_{method}", Handler.forward)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close_gate(self, *, except_first: bool = False) -> None:
        """Hold REPORT requests: all of them, or all but those to the first calendar listed
        (a sync goes through its calendars one by one)."""
        self._except_first = except_first
        self._first_collection = None
        self._open.clear()

    def open_gate(self) -> None:
        self._open.set()

    def hold_put_answers(self) -> None:
        """Forward PUTs, but keep their answers until `release_put_answers`."""
        self._answers.clear()

    def release_put_answers(self) -> None:
        self._answers.set()

    def stop(self) -> None:
        self.open_gate()
        self.release_put_answers()
        self.server.shutdown()
        self.server.server_close()
        self.session.close()
