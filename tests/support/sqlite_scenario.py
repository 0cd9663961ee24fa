"""The queue on the SQLite default: run from its own process with DATABASE_URL=sqlite:///...

    python -m tests.support.sqlite_scenario ACCOUNTS

Requests a sync of ACCOUNTS fake-provider accounts, then a follow-up of each while the first
runs, waits for every run to end, runs the reaper once and prints what happened as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid


def main(count: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "caly.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from calendars.models import Account, Event
    from sync.models import SyncRun
    from sync.services import sync_request_account, sync_runs_reap
    from tests.support.fake_provider import fake_url

    owner = get_user_model().objects.create_user(f"sqlite-{uuid.uuid4().hex[:6]}")
    accounts = [
        Account.objects.create(
            owner=owner,
            provider="fake",
            name=f"a{i}",
            url=fake_url(f"sqlite-{uuid.uuid4().hex[:8]}", delay=0.1, batches=3, events=3),
        )
        for i in range(count)
    ]
    first = [sync_request_account(account=a, trigger="api").pk for a in accounts]
    deadline = time.monotonic() + 60
    while SyncRun.objects.filter(pk__in=first, state="queued").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    follow_ups = [sync_request_account(account=a, trigger="api").pk for a in accounts]
    runs = first + follow_ups
    while SyncRun.objects.filter(pk__in=runs, state__in=["queued", "running"]).exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    states = dict(SyncRun.objects.filter(pk__in=runs).values_list("pk", "state"))
    print(
        json.dumps(
            {
                "states": [states[pk] for pk in runs],
                "distinct_runs": len(set(runs)),
                "events": Event.objects.filter(calendar__account__in=accounts).count(),
                "an_event": [
                    (e.summary, e.start.isoformat(), e.end.isoformat(), e.rdate)
                    for e in Event.objects.filter(calendar__account=accounts[0], summary="Event 1")
                ],
                "keys": [a.url.split("/")[3].split("?")[0] for a in accounts],
                "reaper": sync_runs_reap(),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
