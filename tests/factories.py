"""Test data builders."""

from __future__ import annotations

import itertools
import uuid

from django.contrib.auth import get_user_model

from calendars.models import Account, Calendar, Event

_seq = itertools.count(1)


def make_user(username: str | None = None, **extra):
    username = username or f"user{next(_seq)}"
    return get_user_model().objects.create_user(
        username=username, password="pw-" + username, **extra
    )


def make_account(owner, **fields) -> Account:
    defaults = {
        "provider": Account.Provider.CALDAV,
        "name": f"Account {next(_seq)}",
        "url": "http://127.0.0.1:1/",
    }
    return Account.objects.create(owner=owner, **{**defaults, **fields})


def make_calendar(account, **fields) -> Calendar:
    n = next(_seq)
    defaults = {"remote_id": f"http://127.0.0.1:1/cal{n}/", "name": f"Calendar {n}"}
    return Calendar.objects.create(account=account, **{**defaults, **fields})


def make_event(calendar, **fields) -> Event:
    n = next(_seq)
    defaults = {"uid": f"event-{n}", "href": f"/cal/event-{n}.ics", "etag": '"1"'}
    return Event.objects.create(calendar=calendar, **{**defaults, **fields})


def connect_seeded_caldav(server, *, owner, events: int, prefix: str = "cal", display_name="Work"):
    """A new calendar of `events` events on a real CalDAV server, connected as `owner`'s account
    through the same service as the API. Returns (account, calendar name on the server)."""
    from sync import services
    from tests.support.caldav_servers import vevent

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    server.make_calendar(name, display_name=display_name)
    for i in range(events):
        server.put(name, f"{prefix}{i}.ics", vevent(f"{prefix}{i}-{name}@example.com"))
    account = services.account_connect(
        owner=owner,
        provider="caldav",
        name=server.kind.capitalize(),
        url=server.base_url + "/",
        username=server.user,
        credentials={"password": "secret-password"},
    )
    return account, name
