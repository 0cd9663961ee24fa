"""What the CalDAV provider tests share: a calendar per test, an account on it, a sync run."""

from __future__ import annotations

import uuid

from calendars.models import Account, Calendar, Event
from sync import services
from sync.models import SyncRun
from tests.support.caldav_servers import CalDAVServer

# Tokens each server rejects (well-formed, but no state of theirs).
STALE_TOKENS = {
    "radicale": "http://radicale.org/ns/sync/" + "0" * 64,
    "xandikos": "0" * 40,
}


def new_calendar(server: CalDAVServer, display_name: str = "Work") -> str:
    name = f"cal-{uuid.uuid4().hex[:8]}"
    server.make_calendar(name, display_name=display_name)
    rename_calendar(server, name, display_name)  # Xandikos ignores MKCALENDAR's properties
    return name


def rename_calendar(server: CalDAVServer, name: str, display_name: str) -> None:
    response = server.session.request(
        "PROPPATCH",
        server.calendar_url(name),
        data=(
            '<?xml version="1.0" encoding="utf-8"?><d:propertyupdate xmlns:d="DAV:"><d:set>'
            f"<d:prop><d:displayname>{display_name}</d:displayname></d:prop></d:set>"
            "</d:propertyupdate>"
        ).encode(),
        headers={"Content-Type": "application/xml; charset=utf-8"},
    )
    assert response.status_code == 207, response.text


def connect(owner, server: CalDAVServer, *, base_url: str | None = None) -> Account:
    return services.account_connect(
        owner=owner,
        provider="caldav",
        name=f"{server.kind} account",
        url=(base_url or server.base_url) + "/",
        username=server.user,
        credentials={"password": "secret-password"},
    )


def only(account: Account, *names: str) -> None:
    """Sync only these calendars of the (shared) test server."""
    for calendar in account.calendars.all():
        keep = any(calendar.remote_id.rstrip("/").endswith("/" + n) for n in names)
        if calendar.selected != keep:
            calendar.selected = keep
            calendar.save(update_fields=["selected"])


def calendar_of(account: Account, name: str) -> Calendar:
    return next(c for c in account.calendars.all() if c.remote_id.rstrip("/").endswith("/" + name))


def run_sync(account: Account) -> SyncRun:
    """One sync of the account, in this process, through the same service the worker calls."""
    run = SyncRun.objects.create(account=account, trigger=SyncRun.Trigger.COMMAND)
    services.sync_run_execute(run_id=run.pk)
    run.refresh_from_db()
    return run


def counts(run: SyncRun) -> tuple[str, int, int, int]:
    return (run.state, run.created, run.updated, run.deleted)


def rows(calendar: Calendar) -> dict[tuple[str, str], Event]:
    return {(e.uid, e.recurrence_id): e for e in Event.objects.filter(calendar=calendar)}
