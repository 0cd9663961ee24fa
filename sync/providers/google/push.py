"""Google push: `events.watch` channels on a calendar and `channels.stop`, through the provider's
`execute` and client `service` (see sync.services.push for what Caly does with them)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from sync.providers.google.errors import NotFound
from sync.providers.google.writing import RAW


def watch(
    execute: Callable,
    service,
    calendar_id: str,
    *,
    channel_id: str,
    token: str,
    address: str,
    ttl_seconds: int,
) -> tuple[str, dt.datetime]:
    """Open a channel; returns the watched resource's id and when the channel expires."""
    body = {
        "id": channel_id,
        "type": "web_hook",
        "address": address,
        "token": token,
        "params": {"ttl": str(ttl_seconds)},
    }
    raw = execute(
        service.events().watch(calendarId=calendar_id, body=body),
        what="the calendar's changes",
        decoder=RAW,
        action="watch",
    )
    channel = json.loads(bytes(raw))
    expires = dt.datetime.fromtimestamp(int(channel["expiration"]) / 1000, tz=dt.UTC)
    return str(channel["resourceId"]), expires


def unwatch(execute: Callable, service, *, channel_id: str, resource_id: str) -> None:
    try:
        execute(
            service.channels().stop(body={"id": channel_id, "resourceId": resource_id}),
            what="a push channel",
            decoder=None,
            action="stop",
        )
    except NotFound:
        return  # expired or stopped already
