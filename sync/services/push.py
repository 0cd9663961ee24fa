"""Push in: Google tells Caly when a calendar changes, and Caly syncs just that calendar.

With CALY_PUBLIC_URL set, every selected calendar of an active Google account holds an
`events.watch` channel (a random channel id, a secret token, its expiry), opened and renewed
before it expires by beat (`channels_maintain`), and stopped (`channels.stop`) once its calendar
is deselected or its account is no longer active or removed. Google POSTs to /hooks/google/
(`notification_receive`): a known channel with the right token (compared in constant time) and
state `exists` queues one coalesced sync of that calendar only. Polling stays as the safety net,
rarer for calendars that push (CALY_PUSH_RESYNC_MINUTES).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import uuid

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from calendars.models import Account, Calendar
from sync.models import SyncRun, WatchChannel
from sync.providers import provider_for
from sync.providers.base import ProviderError
from sync.services.requests import BROKER_ERRORS, sync_request_account

logger = logging.getLogger(__name__)

HOOK_PATH = "/hooks/google/"


def push_enabled() -> bool:
    return bool(settings.CALY_PUBLIC_URL)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- notifications ------------------------------------------------------------------------------
def notification_receive(*, channel_id: str, token: str, state: str) -> str:
    """What one notification comes to: "queued", "sync" (the channel's first message),
    "unknown", "forged" (wrong token: nothing changes) or "stale" (stopped at the next tick)."""
    try:
        key = uuid.UUID(channel_id)
    except ValueError:
        return "unknown"
    channel = (
        WatchChannel.objects.select_related("calendar__account").filter(channel_id=key).first()
    )
    if channel is None:
        return "unknown"
    if not hmac.compare_digest(_digest(token), channel.token_digest):
        logger.warning("push notification for channel %s with a wrong token", channel_id)
        return "forged"
    calendar = channel.calendar
    if (
        channel.expires_at <= timezone.now()
        or not calendar.selected
        or calendar.account.status != Account.Status.ACTIVE
    ):
        return "stale"  # `channels_maintain` stops it
    if state != "exists":
        return "sync"
    try:
        sync_request_account(
            account=calendar.account, trigger=SyncRun.Trigger.PUSH, calendar=calendar
        )
    except BROKER_ERRORS:
        # The next notification, or the periodic resync, brings the change.
        logger.warning("push for calendar %s: the broker is away", calendar.pk)
        return "unknown"
    return "queued"


# --- channels -----------------------------------------------------------------------------------
def channels_maintain(*, now: dt.datetime | None = None) -> dict:
    """Open channels for calendars that should push and have none (or one expiring soon),
    stop those that should not (beat, every minute). Errors are logged and tried next tick."""
    now = now or timezone.now()
    opened, stopped = [], []
    renew_by = now + dt.timedelta(seconds=settings.CALY_PUSH_RENEW_BEFORE_SECONDS)
    wanted = Q(selected=True, account__status=Account.Status.ACTIVE) & Q(
        account__provider=Account.Provider.GOOGLE
    )
    # Stop: calendars no longer wanted (or push switched off), and channels renewed below.
    unwanted = WatchChannel.objects.select_related("calendar__account")
    if push_enabled():
        unwanted = unwanted.exclude(Q(calendar__in=Calendar.objects.filter(wanted)))
    for channel in list(unwanted.filter(expires_at__gt=now)):
        _stop(channel)
        stopped.append(channel.calendar_id)
    WatchChannel.objects.filter(pk__in=[c.pk for c in unwanted]).delete()
    if not push_enabled():
        return {"opened": opened, "stopped": stopped}
    due = (
        Calendar.objects.filter(wanted)
        .filter(Q(watch_channel__isnull=True) | Q(watch_channel__expires_at__lte=renew_by))
        .select_related("account")
    )
    for calendar in due:
        old = WatchChannel.objects.filter(calendar=calendar).first()
        try:
            fresh = _open(calendar)
        except ProviderError as exc:
            logger.warning("push channel for calendar %s: %s", calendar.pk, exc)
            continue
        if old is not None:
            _stop(old)
            old.delete()
        fresh.save()
        opened.append(calendar.pk)
    return {"opened": opened, "stopped": stopped}


def channels_stop_for_account(*, account: Account) -> None:
    """Stop the account's channels (before it is removed: its credentials go with it)."""
    for channel in WatchChannel.objects.filter(calendar__account=account).select_related(
        "calendar__account"
    ):
        _stop(channel)
        channel.delete()


def _open(calendar: Calendar) -> WatchChannel:
    channel_id, token = uuid.uuid4(), secrets.token_urlsafe(32)
    provider = provider_for(calendar.account)
    try:
        resource_id, expires = provider.watch(
            calendar.remote_id,
            channel_id=str(channel_id),
            token=token,
            address=settings.CALY_PUBLIC_URL.rstrip("/") + HOOK_PATH,
            ttl_seconds=settings.CALY_PUSH_CHANNEL_TTL_SECONDS,
        )
    finally:
        provider.close()
    return WatchChannel(
        calendar=calendar,
        channel_id=channel_id,
        token_digest=_digest(token),
        resource_id=resource_id,
        expires_at=expires,
    )


def _stop(channel: WatchChannel) -> None:
    provider = provider_for(channel.calendar.account)
    try:
        provider.unwatch(channel_id=str(channel.channel_id), resource_id=channel.resource_id)
    except ProviderError as exc:  # it expires by itself; notifications meanwhile are "stale"
        logger.warning("could not stop push channel %s: %s", channel.channel_id, exc)
    finally:
        provider.close()
