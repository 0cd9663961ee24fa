"""Real CalDAV servers (Radicale, Xandikos) started on free loopback ports for the tests.

`CalDAVServer` also seeds and changes calendars over plain HTTP (MKCALENDAR, PUT, DELETE), the
way any client would, so tests can compare what Caly stored with what the server holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.polling import wait_for
from tests.support.ports import free_port

MKCALENDAR_BODY = """<?xml version="1.0" encoding="utf-8"?>
<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:set><d:prop><d:displayname>{name}</d:displayname></d:prop></d:set>
</c:mkcalendar>"""


def vevent(
    uid: str,
    *,
    summary: str = "",
    start: str = "20260105T090000Z",
    end: str = "20260105T100000Z",
    extra: str = "",
) -> str:
    """One VCALENDAR object text with a single VEVENT (times in iCalendar basic format)."""
    body = textwrap.dedent(
        f"""\
        BEGIN:VCALENDAR
        VERSION:2.0
        PRODID:-//Caly tests//EN
        BEGIN:VEVENT
        UID:{uid}
        DTSTAMP:20260101T000000Z
        DTSTART:{start}
        DTEND:{end}
        SUMMARY:{summary or uid}
        {extra}
        END:VEVENT
        END:VCALENDAR
        """
    )
    return "\r\n".join(line for line in body.splitlines() if line.strip()) + "\r\n"


@dataclass
class CalDAVServer:
    kind: str
    base_url: str
    user: str
    home_path: str
    process: subprocess.Popen
    data_dir: Path
    password: str = "secret-password"
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self):
        self.session.auth = (self.user, self.password)

    @property
    def home_url(self) -> str:
        return self.base_url + self.home_path

    def calendar_url(self, name: str) -> str:
        return f"{self.home_url}{name}/"

    def make_calendar(self, name: str, display_name: str | None = None) -> str:
        url = self.calendar_url(name)
        r = self.session.request(
            "MKCALENDAR", url, data=MKCALENDAR_BODY.format(name=display_name or name)
        )
        assert r.status_code in (201, 405), r.text
        return url

    def put(self, calendar: str, filename: str, ics: str) -> None:
        r = self.session.put(
            self.calendar_url(calendar) + filename,
            data=ics.encode(),
            headers={"Content-Type": "text/calendar; charset=utf-8"},
        )
        assert r.status_code in (200, 201, 204), (r.status_code, r.text)

    def put_collection(self, calendar: str, objects: list[str]) -> None:
        """Many objects in one request: the events of `objects` (vevent texts) as one
        VCALENDAR PUT to the collection, which Radicale stores as one object per UID."""
        assert self.kind == "radicale", "only Radicale takes a whole collection in one PUT"
        events = [o[o.index("BEGIN:VEVENT") : o.index("END:VCALENDAR")] for o in objects]
        text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Caly tests//EN\r\n"
        text += "".join(events) + "END:VCALENDAR\r\n"
        r = self.session.put(
            self.calendar_url(calendar),
            data=text.encode(),
            headers={"Content-Type": "text/calendar; charset=utf-8"},
        )
        assert r.status_code in (200, 201, 204), (r.status_code, r.text)

    def delete(self, calendar: str, filename: str) -> None:
        r = self.session.delete(self.calendar_url(calendar) + filename)
        assert r.status_code in (200, 204), (r.status_code, r.text)

    def delete_calendar(self, calendar: str) -> None:
        r = self.session.delete(self.calendar_url(calendar))
        assert r.status_code in (200, 204), (r.status_code, r.text)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.session.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _wait_until_serving(url: str, process: subprocess.Popen, auth=None) -> None:
    def up():
        if process.poll() is not None:
            raise AssertionError(f"CalDAV server exited with {process.returncode}")
        try:
            requests.request("PROPFIND", url, auth=auth, timeout=2, headers={"Depth": "0"})
            return True
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=30, what=f"CalDAV server at {url}")


def start_radicale(user: str = "alice", password: str | None = None) -> CalDAVServer:
    """Radicale without auth; with `password`, only `user` with that password gets in.

    The password lives in `data_dir / "htpasswd"` (plain text), re-read on every request, so a
    test can change it while the server runs.
    """
    data = Path(tempfile.mkdtemp(prefix="caly-radicale-"))
    port = free_port()
    config = data / "config"
    auth = "type = none"
    if password is not None:
        (data / "htpasswd").write_text(f"{user}:{password}\n")
        auth = "\n".join(
            [
                "type = htpasswd",
                f"htpasswd_filename = {data / 'htpasswd'}",
                "htpasswd_encryption = plain",
            ]
        )
    config.write_text(
        textwrap.dedent(
            f"""\
            [server]
            hosts = 127.0.0.1:{port}
            [auth]
            {{auth}}
            [storage]
            filesystem_folder = {data / "collections"}
            [logging]
            level = warning
            """
        ).replace("{auth}", auth)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "radicale", "-C", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(data / "server.log", "w"),  # noqa: SIM115
    )
    base = f"http://127.0.0.1:{port}"
    _wait_until_serving(base + "/", process, auth=(user, "x"))
    return CalDAVServer(
        "radicale", base, user, f"/{user}/", process, data, password or "secret-password"
    )


def start_xandikos() -> CalDAVServer:
    data = Path(tempfile.mkdtemp(prefix="caly-xandikos-"))
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xandikos",
            "serve",
            "-d",
            str(data / "store"),
            "--defaults",
            "-l",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(data / "server.log", "w"),  # noqa: SIM115
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    base = f"http://127.0.0.1:{port}"
    _wait_until_serving(base + "/", process)
    return CalDAVServer("xandikos", base, "user", "/user/calendars/", process, data)
