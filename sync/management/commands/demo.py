"""`manage.py demo`, run by `make demo` next to web, workers and beat: a local Radicale with a sample
calendar, a demo user and account, a first sync through the queue, and where to log in.

It keeps running as long as Radicale does; stopping it (Ctrl-C on `make demo`) stops Radicale.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from icalendar import Calendar as ICalendar
from icalendar import Event as IEvent

from calendars.models import Account, Event
from caly.polling import wait_for
from sync import services
from sync.models import SyncRun
from sync.providers.base import ProviderError

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
ACCOUNT_NAME = "Sample calendars (local Radicale)"
MKCALENDAR = """<?xml version="1.0" encoding="utf-8"?>
<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:set><d:prop><d:displayname>{name}</d:displayname></d:prop></d:set>
</c:mkcalendar>"""


class Command(BaseCommand):
    help = "Start a local Radicale with sample calendars, connect a demo user to it and sync."

    def add_arguments(self, parser):
        parser.add_argument("--web-url", default="http://127.0.0.1:8000/")
        parser.add_argument("--radicale-port", type=int, default=5232)
        parser.add_argument("--data-dir", default=str(Path(settings.BASE_DIR) / ".demo"))
        parser.add_argument(
            "--timeout", type=float, default=180, help="seconds to wait for the first sync"
        )

    def handle(self, *args, web_url, radicale_port, data_dir, timeout, **options):
        if not settings.CALY_ALLOW_PRIVATE_URLS:
            raise CommandError("The demo server is on loopback: set CALY_ALLOW_PRIVATE_URLS=1.")
        radicale_url = f"http://127.0.0.1:{radicale_port}"
        radicale = start_radicale(Path(data_dir) / "radicale", radicale_port)
        # honcho stops every process with SIGTERM; take Radicale along.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            wait(lambda: _answers(radicale_url + "/", radicale), 30, "Radicale to start")
            calendars = seed(radicale_url, DEMO_USER)
            user = demo_user()
            account = demo_account(user, radicale_url)
            run = services.sync_request(user=user, account=account, trigger="command")[0]
            self.stdout.write(f"demo: sync #{run.pk} queued; waiting for a worker to run it")
            wait(lambda: _answers(web_url + "login/"), timeout, "the web server")
            run = wait(
                lambda: (
                    SyncRun.objects.filter(pk=run.pk, state__in=["succeeded", "failed"])
                    .select_related("account")
                    .first()
                ),
                timeout,
                "the first sync (is a worker running?)",
            )
            self.stdout.write(banner(run, web_url, radicale_url, calendars))
            radicale.wait()
            raise CommandError(f"Radicale stopped (exit code {radicale.returncode}).")
        finally:
            if radicale.poll() is None:
                radicale.terminate()
                radicale.wait(timeout=10)


def wait(condition, timeout: float, what: str):
    return wait_for(condition, timeout=timeout, interval=0.2, what=what, error=CommandError)


def _answers(url: str, process: subprocess.Popen | None = None) -> bool:
    if process is not None and process.poll() is not None:
        raise CommandError(f"Radicale exited at start (code {process.returncode}).")
    try:
        requests.request("PROPFIND" if process else "GET", url, timeout=2, auth=("demo", "x"))
        return True
    except requests.ConnectionError:
        return False


def start_radicale(folder: Path, port: int) -> subprocess.Popen:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise CommandError(
                f"Port {port} is taken; run with DEMO_RADICALE_PORT=<another port> make demo."
            )
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config"
    config.write_text(
        textwrap.dedent(
            f"""\
            # The demo's CalDAV server: loopback only, any password, data under this folder.
            [server]
            hosts = 127.0.0.1:{port}
            [auth]
            type = none
            [storage]
            filesystem_folder = {folder / "collections"}
            [logging]
            level = warning
            """
        )
    )
    return subprocess.Popen([sys.executable, "-m", "radicale", "-C", str(config)])


# --- the sample data ------------------------------------------------------------------------
def sample_calendars(today: dt.date) -> dict[str, tuple[str, list[IEvent]]]:
    """Two calendars of events around `today`: recurring ones with an exception and a cancelled
    occurrence, all-day ones, and times in several time zones (one event starts in one zone
    and ends in another)."""
    berlin, new_york = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
    tokyo, london = ZoneInfo("Asia/Tokyo"), ZoneInfo("Europe/London")
    los_angeles, sydney = ZoneInfo("America/Los_Angeles"), ZoneInfo("Australia/Sydney")
    monday = today - dt.timedelta(days=today.weekday())

    def at(day: dt.date, hour: int, minute: int, zone) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone)

    def event(uid: str, summary: str, start, end, **props) -> IEvent:
        item = IEvent()
        item.add("uid", f"{uid}@demo.caly")
        item.add("dtstamp", dt.datetime.now(dt.UTC))
        item.add("summary", summary)
        item.add("dtstart", start)
        item.add("dtend", end)
        for name, value in props.items():
            item.add(name.replace("_", "-"), value)
        return item

    standup_day = monday + dt.timedelta(days=2)
    work = [
        event(
            "standup",
            "Team standup",
            at(monday, 9, 30, berlin),
            at(monday, 9, 45, berlin),
            rrule={"freq": "weekly", "byday": ["MO", "TU", "WE", "TH", "FR"], "count": 60},
            exdate=at(monday + dt.timedelta(days=1), 9, 30, berlin),
            location="Berlin office",
        ),
        # This week's Wednesday standup moved to 11:00 (an overridden occurrence).
        event(
            "standup",
            "Team standup (moved)",
            at(standup_day, 11, 0, berlin),
            at(standup_day, 11, 15, berlin),
            recurrence_id=at(standup_day, 9, 30, berlin),
        ),
        event(
            "ny-call",
            "Call with the New York office",
            at(today + dt.timedelta(days=1), 10, 0, new_york),
            at(today + dt.timedelta(days=1), 11, 0, new_york),
        ),
        event(
            "tokyo-sync",
            "Tokyo partner sync",
            at(today, 9, 0, tokyo),
            at(today, 10, 0, tokyo),
            rrule={"freq": "monthly", "count": 6},
        ),
        event(
            "sprint-review",
            "Sprint review",
            at(monday + dt.timedelta(days=4), 16, 0, sydney),
            at(monday + dt.timedelta(days=4), 17, 0, sydney),
            rrule={"freq": "weekly", "interval": 2, "count": 10},
        ),
        event(
            "deploy",
            "Deploy window",
            at(today + dt.timedelta(days=2), 22, 0, dt.UTC),
            at(today + dt.timedelta(days=2), 23, 30, dt.UTC),
        ),
    ]
    travel = [
        event(
            "flight",
            "Flight LHR → SFO",
            at(today + dt.timedelta(days=5), 11, 15, london),
            at(today + dt.timedelta(days=5), 14, 20, los_angeles),
            location="London Heathrow",
        ),
        event(
            "conference",
            "Conference in San Francisco",
            today + dt.timedelta(days=6),
            today + dt.timedelta(days=9),
        ),
        event(
            "holiday",
            "Company holiday",
            monday + dt.timedelta(days=14),
            monday + dt.timedelta(days=15),
            rrule={"freq": "yearly"},
        ),
    ]
    return {"work": ("Work (sample)", work), "travel": ("Travel (sample)", travel)}


def seed(base_url: str, user: str) -> list[str]:
    """Create (or refresh) the sample calendars over plain CalDAV, as any client would."""
    session = requests.Session()
    session.auth = (user, "any-password")
    names = []
    for slug, (display_name, events) in sample_calendars(dt.date.today()).items():
        url = f"{base_url}/{user}/{slug}/"
        made = session.request("MKCALENDAR", url, data=MKCALENDAR.format(name=display_name))
        if made.status_code not in (201, 405, 409):
            raise CommandError(f"Could not create {url}: HTTP {made.status_code}")
        by_uid: dict[str, list[IEvent]] = {}
        for item in events:
            by_uid.setdefault(str(item["uid"]), []).append(item)
        for uid, items in by_uid.items():
            body = ICalendar()
            body.add("prodid", "-//Caly demo//EN")
            body.add("version", "2.0")
            for item in items:
                body.add_component(item)
            body.add_missing_timezones()
            put = session.put(
                url + uid.split("@")[0] + ".ics",
                data=body.to_ical(),
                headers={"Content-Type": "text/calendar; charset=utf-8"},
            )
            if put.status_code not in (200, 201, 204):
                raise CommandError(f"Could not store {uid} in {url}: HTTP {put.status_code}")
        names.append(display_name)
    session.close()
    return names


def demo_user():
    user, _ = get_user_model().objects.get_or_create(username=DEMO_USER)
    # A local demo: a well-known password, and the admin is open to it too.
    user.set_password(DEMO_PASSWORD)
    user.is_staff = user.is_superuser = True
    user.save()
    return user


def demo_account(user, radicale_url: str) -> Account:
    existing = Account.objects.filter(owner=user, name=ACCOUNT_NAME).first()
    if existing is not None and existing.url == radicale_url + "/":
        if existing.status != Account.Status.ACTIVE:
            existing.status = Account.Status.ACTIVE
            existing.save(update_fields=["status"])
        return existing
    if existing is not None:
        existing.delete()  # the demo server moved to another port: start afresh
    try:
        return services.account_connect(
            owner=user,
            provider=Account.Provider.CALDAV,
            name=ACCOUNT_NAME,
            url=radicale_url + "/",
            username=DEMO_USER,
            credentials={"password": "any-password"},
        )
    except ProviderError as exc:
        raise CommandError(f"Could not connect to the demo Radicale: {exc}") from None


def banner(run: SyncRun, web_url: str, radicale_url: str, calendars: list[str]) -> str:
    events = Event.objects.filter(calendar__account=run.account).count()
    took = (run.finished_at - run.started_at).total_seconds() if run.started_at else 0
    if run.state == SyncRun.State.SUCCEEDED:
        outcome = (
            f"First sync #{run.pk} succeeded in {took:.1f} s: {events} events "
            f"in {len(calendars)} calendars ({', '.join(calendars)})."
        )
    else:
        outcome = f"First sync #{run.pk} failed: {run.error}"
    line = "=" * 78
    return textwrap.dedent(
        f"""
        {line}
        Caly demo is running. {outcome}

          Dashboard  {web_url}   log in as {DEMO_USER} / {DEMO_PASSWORD}
          Admin      {web_url}admin/   (sync runs, task results, schedules)
          API docs   {web_url}api/docs/
          Radicale   {radicale_url}/{DEMO_USER}/   (any password)

        Change the sample calendars with any CalDAV client, then press "Sync now" (or wait
        for the periodic resync). From a shell:
          .venv/bin/python manage.py sync_user {DEMO_USER} --wait
        Ctrl-C stops everything.
        {line}
        """
    )
