"""Test data builders."""

from __future__ import annotations

import itertools

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
