"""CalDAV: Caly against Radicale on loopback, next to python-caldav and vdirsyncer.

Measured in one run, on one Radicale with warm caches (each calendar is listed once before
anything is timed, so every contender meets the same server):
- initial sync of a 5,000-event calendar: Caly's whole sync run (discovery PROPFIND, fetch,
  parse, store in PostgreSQL) against the raw python-caldav fetch of the same calendar
  (`get_events()`, goal ≤ 1.5×) and against vdirsyncer 0.21 syncing it to a filesystem
  storage (goal: Caly ≤ 0.5× vdirsyncer's time); medians of REPEATS;
- incremental sync after changing 1 event: HTTP requests (goal ≤ 3, counted by a proxy that
  sees every request) and time ÷ initial (goal ≤ 0.05); the no-change sync too;
- a 50,000-event calendar synced by a real Celery worker process (thread pool): its peak RSS
  (VmHWM, goal ≤ 250 MB) and how long the sync took;
- the same calendar on a slow server (docs/large-calendars.md): behind the proxy, requests for
  the whole calendar answered only after 1.5 x the workers' timeout (CALY_HTTP_TIMEOUT, 30 s),
  against the same proxy answering at once: the first sync completes, its time against the
  normal server's, the worker's peak RSS (goal ≤ 150 MB) and its requests.
Radicale's own time for a bare sync-collection REPORT is reported beside the incremental
figures: it is the floor under any incremental sync of that calendar.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from common import ROOT, median, report, setup_django, timed

EVENTS = int(os.environ.get("CALY_BENCH_CALDAV_EVENTS", 5000))
BIG = int(os.environ.get("CALY_BENCH_CALDAV_BIG", 50_000))
# Which parts run: "small" (5,000 events), "big" (the 50,000 in a worker), "slow" (the same on
# a slow server); all by default, e.g. CALY_BENCH_CALDAV_PARTS=big,slow.
PARTS = set(os.environ.get("CALY_BENCH_CALDAV_PARTS", "small,big,slow").split(","))
# CALY_HTTP_TIMEOUT of the workers syncing from the slow server (the default). Listing 50,000
# events takes Radicale some 12 s here, and a listing cannot be split: it has to fit.
SLOW_TIMEOUT = 30.0
REPEATS = 3
PASSWORD = "bench-password"

BERLIN = """BEGIN:VTIMEZONE\r
TZID:Europe/Berlin\r
BEGIN:DAYLIGHT\r
TZOFFSETFROM:+0100\r
TZOFFSETTO:+0200\r
TZNAME:CEST\r
DTSTART:19700329T020000\r
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r
END:DAYLIGHT\r
BEGIN:STANDARD\r
TZOFFSETFROM:+0200\r
TZOFFSETTO:+0100\r
TZNAME:CET\r
DTSTART:19701025T030000\r
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r
END:STANDARD\r
END:VTIMEZONE\r
"""
WORDS = [
    "planning",
    "review",
    "budget",
    "team",
    "sync",
    "customer",
    "launch",
    "design",
    "roadmap",
    "retro",
    "interview",
    "lunch",
    "dentist",
    "workshop",
    "quarterly",
    "standup",
    "offsite",
    "training",
    "call",
    "demo",
    "Überblick",
    "café",
]


def calendar_text(count: int, seed: int) -> bytes:
    """One VCALENDAR with `count` events: mostly UTC, some in Europe/Berlin, some weekly."""
    rng = random.Random(seed)
    parts = ["BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Caly bench//EN\r\n", BERLIN]
    for i in range(count):
        day = 1 + i % 28
        month = 1 + (i // 28) % 12
        hour = 7 + i % 10
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        if i % 7 == 0:
            times = (
                f"DTSTART;TZID=Europe/Berlin:2026{month:02}{day:02}T{hour:02}0000\r\n"
                f"DTEND;TZID=Europe/Berlin:2026{month:02}{day:02}T{hour:02}4500\r\n"
            )
        else:
            times = (
                f"DTSTART:2026{month:02}{day:02}T{hour:02}0000Z\r\n"
                f"DTEND:2026{month:02}{day:02}T{hour:02}3000Z\r\n"
            )
        rule = "RRULE:FREQ=WEEKLY;COUNT=20\r\n" if i % 20 == 0 else ""
        parts.append(
            "BEGIN:VEVENT\r\n"
            f"UID:bench-{seed}-{i}@example.com\r\n"
            "DTSTAMP:20260101T000000Z\r\n"
            f"{times}{rule}"
            f"SUMMARY:{rng.choice(WORDS).title()} {i}\r\n"
            f"DESCRIPTION:{words}\r\n"
            f"LOCATION:Room {i % 40}\r\n"
            "END:VEVENT\r\n"
        )
    parts.append("END:VCALENDAR\r\n")
    return "".join(parts).encode()


def seed(server, name: str, count: int) -> str:
    """A calendar of `count` events in one PUT of the whole collection, then listed once."""
    url = server.make_calendar(name)
    started = time.perf_counter()
    response = server.session.put(
        url, data=calendar_text(count, seed=count), headers={"Content-Type": "text/calendar"}
    )
    assert response.status_code in (200, 201, 204), response.text[:500]
    warm(server, url, count, started, "seeded")
    return url


# --- contenders ---------------------------------------------------------------------------
def python_caldav_fetch(url: str, user: str) -> int:
    import caldav

    with caldav.DAVClient(url=url, username=user, password=PASSWORD) as client:
        calendar = client.calendar(url=url)
        events = calendar.get_events()
        return sum(1 for e in events if e.data)


def vdirsyncer_prepare(url: str, user: str, workdir: Path) -> tuple[str, Path]:
    """A fresh vdirsyncer configuration and empty local storage, discovered."""
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "cal").mkdir(parents=True)
    config = workdir / "config"
    config.write_text(
        textwrap.dedent(
            f"""\
            [general]
            status_path = "{workdir}/status/"
            [pair bench]
            a = "remote"
            b = "local"
            collections = null
            [storage remote]
            type = "caldav"
            url = "{url}"
            username = "{user}"
            password = "{PASSWORD}"
            [storage local]
            type = "filesystem"
            path = "{workdir}/cal/"
            fileext = ".ics"
            """
        )
    )
    binary = str(Path(sys.executable).parent / "vdirsyncer")
    subprocess.run(
        [binary, "-c", str(config), "discover", "bench"], check=True, capture_output=True
    )
    return binary, config


def vdirsyncer_timed(url: str, user: str, workdir: Path) -> tuple[float, int]:
    binary, config = vdirsyncer_prepare(url, user, workdir)
    started = time.perf_counter()
    subprocess.run([binary, "-c", str(config), "sync", "bench"], check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    return elapsed, len(list((workdir / "cal").iterdir()))


def caly_account(owner, base_url: str, user: str, calendar_name: str):
    from sync import services

    account = services.account_connect(
        owner=owner,
        provider="caldav",
        name=f"bench {uuid.uuid4().hex[:6]}",
        url=base_url + "/",
        username=user,
        credentials={"password": PASSWORD},
    )
    for calendar in account.calendars.all():
        keep = calendar.remote_id.rstrip("/").endswith("/" + calendar_name)
        if calendar.selected != keep:
            calendar.selected = keep
            calendar.save(update_fields=["selected"])
    return account


def caly_sync(account):
    from sync import services
    from sync.models import SyncRun

    run = SyncRun.objects.create(account=account, trigger=SyncRun.Trigger.COMMAND)
    started = time.perf_counter()
    services.sync_run_execute(run_id=run.pk)
    elapsed = time.perf_counter() - started
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    return elapsed, run


def change_one_event(server, account, n: int) -> None:
    from calendars.models import Event

    event = Event.objects.filter(calendar__account=account).order_by("id")[n]
    raw = event.raw.replace(f"SUMMARY:{event.summary}", f"SUMMARY:Changed {n}", 1)
    response = server.session.put(
        server.base_url + event.href,
        data=raw.encode(),
        headers={"Content-Type": "text/calendar; charset=utf-8"},
    )
    assert response.status_code in (200, 201, 204), response.text


# --- the run ------------------------------------------------------------------------------
def seed_files(server, name: str, count: int) -> str:
    """A calendar of `count` events written straight into Radicale's storage (one file per
    event, as Radicale keeps them; a PUT of 50,000 takes Radicale over 20 minutes), then listed
    once so that Radicale builds its caches before anyone is timed."""
    url = server.make_calendar(name)
    folder = server.data_dir / "collections" / "collection-root" / server.user / name
    assert folder.is_dir(), folder
    started = time.perf_counter()
    text = calendar_text(count, seed=count).decode()
    _, _, body = text.partition("BEGIN:VEVENT\r\n")
    prefix = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Caly bench//EN\r\n"
    for i, event in enumerate(body.removesuffix("END:VCALENDAR\r\n").split("BEGIN:VEVENT\r\n")):
        zone = BERLIN if "TZID=Europe/Berlin" in event else ""
        (folder / f"e{i}.ics").write_text(
            f"{prefix}{zone}BEGIN:VEVENT\r\n{event}END:VCALENDAR\r\n", newline=""
        )
    warm(server, url, count, started, "wrote")
    return url


def warm(server, url: str, count: int, started: float, done: str) -> None:
    """List the calendar once: Radicale builds its caches on the first listing (some 9 ms an
    event), which nobody timed should pay."""
    listing = server.session.request(
        "REPORT",
        url,
        data='<?xml version="1.0"?><d:sync-collection xmlns:d="DAV:"><d:sync-token/>'
        "<d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>",
        headers={"Depth": "1", "Content-Type": "application/xml"},
    )
    assert listing.status_code == 207, listing.text[:300]
    assert listing.text.count("getetag>") // 2 >= count, "Radicale did not list every event"
    print(f"  {done} {count} events in {time.perf_counter() - started:.1f} s", flush=True)


def five_thousand(server, proxy, owner, workdir: Path, figures: dict) -> None:
    """The 5,000-event calendar: Caly, python-caldav and vdirsyncer; requests per sync."""
    from calendars.models import Account, Calendar, Event

    url = seed(server, "five-thousand", EVENTS)

    raw_times, vdir_times, caly_times = [], [], []
    for _ in range(REPEATS):
        with timed(raw_times):
            fetched = python_caldav_fetch(url, server.user)
        assert fetched == EVENTS, fetched
        elapsed, files = vdirsyncer_timed(url, server.user, workdir)
        assert files == EVENTS, files
        vdir_times.append(elapsed)
        account = caly_account(owner, server.base_url, server.user, "five-thousand")
        elapsed, run = caly_sync(account)
        caly_times.append(elapsed)
        assert run.created >= EVENTS, run.created
        if _ < REPEATS - 1:
            Account.objects.filter(pk=account.pk).delete()
    initial = median(caly_times)
    figures.update(
        {
            "initial_caly_s": initial,
            "initial_python_caldav_get_events_s": median(raw_times),
            "initial_vdirsyncer_s": median(vdir_times),
            "caly_vs_python_caldav": initial / median(raw_times),
            "caly_vs_python_caldav_goal": 1.5,
            "caly_vs_vdirsyncer": initial / median(vdir_times),
            "caly_vs_vdirsyncer_goal": 0.5,
            "rows_stored": Event.objects.filter(calendar__account=account).count(),
        }
    )

    # Incremental: one event changed on the server, then a sync with no change at all.
    incremental, unchanged = [], []
    for n in range(REPEATS):
        change_one_event(server, account, n)
        elapsed, run = caly_sync(account)
        assert (run.created, run.updated, run.deleted) == (0, 1, 0), run
        incremental.append(elapsed)
        with timed(unchanged):
            caly_sync(account)
    # What Radicale itself needs to answer "what changed since this token?" (it hashes
    # every object of the collection): the floor under any incremental sync of it.
    token = Calendar.objects.get(account=account, selected=True).sync_token
    floor: list[float] = []
    for _ in range(REPEATS):
        with timed(floor):
            answer = server.session.request(
                "REPORT",
                url,
                data='<?xml version="1.0"?><d:sync-collection xmlns:d="DAV:">'
                f"<d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>"
                "<d:prop><d:getetag/></d:prop></d:sync-collection>",
                headers={"Depth": "1", "Content-Type": "application/xml"},
            )
        assert answer.status_code == 207
    figures.update(
        {
            "radicale_sync_report_alone_s": median(floor),
            "incremental_1_change_s": median(incremental),
            "incremental_vs_initial": median(incremental) / initial,
            "incremental_vs_initial_goal": 0.05,
            "incremental_without_radicale_report_vs_initial": (median(incremental) - median(floor))
            / initial,
            "no_change_s": median(unchanged),
        }
    )

    # Requests, counted by the proxy every request goes through (untimed runs).
    counted = caly_account(owner, proxy.url, server.user, "five-thousand")
    proxy.requests.clear()
    caly_sync(counted)
    figures["requests_initial_caly"] = len(proxy.requests)
    proxy.requests.clear()
    change_one_event(server, counted, REPEATS)
    caly_sync(counted)
    figures["requests_incremental_1_change"] = len(proxy.requests)
    figures["requests_incremental_goal"] = 3
    figures["requests_incremental_detail"] = ", ".join(
        f"{r.method} {r.report}".strip() for r in proxy.requests
    )
    proxy.requests.clear()
    caly_sync(counted)
    figures["requests_no_change"] = len(proxy.requests)
    proxy.requests.clear()
    python_caldav_fetch(proxy.url + urlpath(url), server.user)
    figures["requests_python_caldav_get_events"] = len(proxy.requests)
    proxy.requests.clear()
    vdirsyncer_timed(proxy.url + urlpath(url), server.user, workdir)
    figures["requests_vdirsyncer_initial"] = len(proxy.requests)
    Account.objects.filter(owner=owner).delete()


def main() -> None:
    setup_django()
    from django.contrib.auth import get_user_model

    from tests.support.caldav_servers import start_radicale
    from tests.support.dav_proxy import DAVProxy

    server = start_radicale(user="bench")
    server.session.auth = ("bench", PASSWORD)
    proxy = DAVProxy(server.base_url).start()
    owner = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:6]}")
    workdir = Path(tempfile.mkdtemp(prefix="caly-bench-vdirsyncer-"))
    figures: dict = {"events": EVENTS, "repeats": REPEATS}
    try:
        if "small" in PARTS:
            five_thousand(server, proxy, owner, workdir, figures)
            report("caldav", figures)  # kept even if the big calendar fails below
        if "big" in PARTS:
            print("  now the big calendar…", flush=True)
            figures.update(big_calendar_in_a_worker(server, owner))
            report("caldav", figures)
        if "slow" in PARTS:
            print("  and the big calendar on a slow server…", flush=True)
            if "big" not in PARTS:
                seed_files(server, "fifty-thousand", BIG)
            figures.update(slow_server_in_a_worker(server))
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report("caldav", figures)


def urlpath(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def big_calendar_in_a_worker(server, owner) -> dict:
    """50,000 events synced by a real worker process; its peak RSS is what the goal is about."""

    url = seed_files(server, "fifty-thousand", BIG)
    started = time.perf_counter()
    listing = server.session.request(
        "PROPFIND",
        url,
        data='<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/>'
        "</d:prop></d:propfind>",
        headers={"Depth": "1", "Content-Type": "application/xml"},
    )
    listed_s = time.perf_counter() - started
    assert listing.status_code == 207
    account = caly_account(owner, server.base_url, server.user, "fifty-thousand")
    done, idle_kb, peak_kb = sync_in_a_worker(account)
    return {
        "big_events": BIG,
        "big_listing_propfind_s": listed_s,
        "big_listing_bytes_per_object": len(listing.content) / BIG,
        "big_rows_created": done.created,
        "big_sync_s": (done.finished_at - done.started_at).total_seconds(),
        "big_worker_idle_rss_mb": idle_kb / 1024,
        "big_worker_peak_rss_mb": peak_kb / 1024,
        "big_worker_peak_rss_goal_mb": 250,
    }


def sync_in_a_worker(account, env: dict | None = None):
    """One first sync of `account` by a fresh worker process: the run, idle and peak RSS (kB)."""
    from sync import services
    from sync.models import SyncRun
    from tests.support.polling import wait_for
    from tests.support.workers import start_worker

    worker = start_worker(threads=2, env=env)
    try:
        idle_kb = _status_kb(worker.pid, "VmRSS")
        (run,) = services.sync_request(user=account.owner, account=account, trigger="command")

        def finished():
            current = SyncRun.objects.get(pk=run.pk)
            return current if current.state in SyncRun.TERMINAL_STATES else None

        done = wait_for(finished, timeout=1800, interval=0.5, what="the big calendar's sync")
        peak_kb = _status_kb(worker.pid, "VmHWM")
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    return done, idle_kb, peak_kb


def slow_server_in_a_worker(server) -> dict:
    """The big calendar behind the proxy: answering at once, then answering requests for the
    whole calendar only after 1.5 x the workers' timeout. Each sync by a fresh worker."""
    from django.contrib.auth import get_user_model

    from calendars.models import Calendar
    from tests.support.dav_proxy import DAVProxy

    proxy = DAVProxy(server.base_url).start()
    figures: dict = {"slow_events": BIG, "slow_timeout_s": SLOW_TIMEOUT}
    try:
        for case, delay in (("normal", 0.0), ("slow", 1.5 * SLOW_TIMEOUT)):
            owner = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:6]}")
            account = caly_account(owner, proxy.url, server.user, "fifty-thousand")
            proxy.requests.clear()
            proxy.slow_whole_calendar = delay
            done, _, peak_kb = sync_in_a_worker(
                account, env={"CALY_HTTP_TIMEOUT": str(SLOW_TIMEOUT)}
            )
            calendar = Calendar.objects.get(account=account, selected=True)
            figures[f"{case}_server_first_sync_s"] = (
                done.finished_at - done.started_at
            ).total_seconds()
            figures[f"{case}_server_rows_created"] = done.created
            figures[f"{case}_server_worker_peak_rss_mb"] = peak_kb / 1024
            figures[f"{case}_server_requests"] = ", ".join(
                f"{n} {kind}" for kind, n in request_kinds(proxy).items()
            )
            figures[f"{case}_server_remembered"] = (
                f"by_listing={calendar.fetch_by_listing}, batch={calendar.fetch_batch}"
            )
        figures["slow_vs_normal_server"] = (
            figures["slow_server_first_sync_s"] / figures["normal_server_first_sync_s"]
        )
        figures["slow_server_worker_peak_rss_goal_mb"] = 150
    finally:
        proxy.stop()
    return figures


def request_kinds(proxy) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in proxy.requests:
        kind = f"{r.method} {r.report}".strip() + (" (answered late)" if r.slowed else "")
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
