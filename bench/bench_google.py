"""Google Calendar: a 10,000-event calendar on the local fake of the Calendar API.

Measured in one run, the fake serving from its own process on loopback:
- requests for Caly's initial sync (goal: 4 events.list pages) and for a sync with no change
  (goal: 1 events.list), besides the one calendarList.list every sync starts with;
- Caly's initial sync time against the raw client (google-api-python-client with its default
  httplib2 transport) paging through the same events (goal: at most 1.5×). Caly's figure is
  given twice: the provider alone (fetch and convert), and the whole sync run stored in
  PostgreSQL;
- a no-change sync, and a full resync after the sync token expired (HTTP 410) with nothing
  changed, which must write nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import requests
from common import ROOT, median, report, setup_django, timed

EVENTS = 10_000
REPEATS = 7


def start_fake() -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_google", "--events", str(EVENTS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, json.loads(process.stdout.readline())


def main() -> None:
    fake, info = start_fake()
    try:
        for name, value in info.items():
            if name.startswith("CALY_"):
                os.environ[name] = value
        setup_django()
        run(info)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def counts(info: dict) -> dict:
    stats = requests.get(info["CALY_GOOGLE_API_ENDPOINT"] + "_fake/stats", timeout=10).json()
    totals = {row["method"]: row["count"] for row in stats["api"] if row["user"]}
    totals["token"] = stats["token"]
    return totals


def delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k) != before.get(k)}


def raw_client(info: dict):
    """The client as its documentation shows it: default httplib2 transport, no Caly at all."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    credentials = Credentials(
        None,
        refresh_token=info["refresh_token"],
        token_uri=info["CALY_GOOGLE_TOKEN_URI"],
        client_id=info["CALY_GOOGLE_CLIENT_ID"],
        client_secret=info["CALY_GOOGLE_CLIENT_SECRET"],
    )
    return build(
        "calendar",
        "v3",
        credentials=credentials,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": info["CALY_GOOGLE_API_ENDPOINT"] + "calendar/v3/"},
    )


def raw_paging(service, calendar_id: str) -> int:
    listed, page_token = 0, None
    while True:
        page = (
            service.events()
            .list(calendarId=calendar_id, maxResults=2500, pageToken=page_token)
            .execute()
        )
        listed += len(page["items"])
        page_token = page.get("nextPageToken")
        if not page_token:
            return listed


def run(info: dict) -> None:
    from calendars.models import Calendar, Event
    from sync import services
    from sync.models import SyncRun
    from sync.providers.google import GoogleProvider
    from sync.remote import Cursor
    from tests.factories import make_user

    calendar_id = info["calendar"]

    # The raw client and Caly's provider alone (fetch every page, turn each event into a
    # RemoteEvent), both warmed up, then timed in turns so that load on the machine hits both.
    service = raw_client(info)
    raw_paging(service, calendar_id)
    provider = GoogleProvider(credentials={"refresh_token": info["refresh_token"]})
    (remote,) = provider.discover()

    def provider_paging() -> int:
        return sum(
            len(b.objects) for b in provider.changes(remote, cursor=Cursor(), stored_etags=dict)
        )

    provider_paging()
    raw_times, provider_times = [], []
    for _ in range(REPEATS):
        with timed(raw_times):
            assert raw_paging(service, calendar_id) == EVENTS
        with timed(provider_times):
            assert provider_paging() == EVENTS
    provider.close()

    # The whole sync run, as a worker executes it, stored in PostgreSQL.
    owner = make_user("bench-google")
    account = services.account_connect(
        owner=owner,
        provider="google",
        name="Bench",
        credentials={"refresh_token": info["refresh_token"]},
    )

    def sync_once() -> SyncRun:
        (run,) = services.sync_request(
            user=owner, account=account, trigger=SyncRun.Trigger.COMMAND, publish=False
        )
        services.sync_run_execute(run_id=run.pk)
        run.refresh_from_db()
        assert run.state == "succeeded", run.error
        return run

    initial_times, initial_requests = [], {}
    for _ in range(REPEATS):
        Event.objects.filter(calendar__account=account).delete()
        Calendar.objects.filter(account=account).update(sync_token="")
        before = counts(info)
        with timed(initial_times):
            run = sync_once()
        initial_requests = delta(before, counts(info))
        assert run.created == EVENTS

    incremental_times, incremental_requests = [], {}
    for _ in range(REPEATS):
        before = counts(info)
        with timed(incremental_times):
            run = sync_once()
        incremental_requests = delta(before, counts(info))
        assert (run.created, run.updated, run.deleted) == (0, 0, 0)

    # The sync token expires (the fake answers 410): a full listing that writes nothing.
    Calendar.objects.filter(account=account).update(sync_token="fake-sync-expired")
    ids_before = set(Event.objects.filter(calendar__account=account).values_list("pk", flat=True))
    resync_times = []
    with timed(resync_times):
        run = sync_once()
    assert (run.created, run.updated, run.deleted) == (0, 0, 0)
    assert set(Event.objects.filter(calendar__account=account).values_list("pk", flat=True)) == (
        ids_before
    )

    raw = median(raw_times)
    report(
        "google",
        {
            "events": EVENTS,
            "initial_events_list_requests": initial_requests.get("calendar.events.list", 0),
            "initial_calendar_list_requests": initial_requests.get("calendar.calendarList.list", 0),
            "initial_token_requests": initial_requests.get("token", 0),
            "incremental_events_list_requests": incremental_requests.get("calendar.events.list", 0),
            "incremental_api_requests": sum(
                v for k, v in incremental_requests.items() if k != "token"
            ),
            "raw_client_paging_s": raw,
            "caly_provider_paging_s": median(provider_times),
            # Each provider run against the raw run just before it: steadier on a busy machine.
            "caly_provider_vs_raw": median(
                [p / r for p, r in zip(provider_times, raw_times, strict=True)]
            ),
            "caly_provider_vs_raw_best": min(provider_times) / min(raw_times),
            "caly_initial_sync_s": median(initial_times),
            "caly_initial_sync_vs_raw": median(initial_times) / raw,
            "caly_incremental_sync_s": median(incremental_times),
            "caly_410_full_resync_s": resync_times[0],
        },
    )


if __name__ == "__main__":
    main()
