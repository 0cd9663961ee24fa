"""Webhooks out: notifications of changes to the addresses apps registered.

A delivery is recorded in the transaction that made the change (`deliveries_record`) and
published to the webhooks queue once it commits; a worker of that queue POSTs it, signed
(`Caly-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`), and every
attempt is kept. Any 2xx delivers it; otherwise it is sent again after a growing delay (through
the broker's delay queues, as sync retries are) for CALY_WEBHOOK_RETRY_HOURS, then given up. A
webhook all of whose deliveries failed for that long is deactivated. At least once: a receiver
may see a delivery twice (its `id` tells).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time

import niquests
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sync import broker, http
from sync.backoff import backoff
from sync.models import Webhook, WebhookAttempt, WebhookDelivery
from sync.providers.base import ProviderError
from sync.services.requests import BROKER_ERRORS

logger = logging.getLogger(__name__)

MAX_IDS = 500  # event ids per events.changed delivery
RESPONSE_KEPT = 200  # characters of a failed answer kept with the attempt


def webhook_create(*, owner, url: str, events: list[str]) -> tuple[Webhook, str]:
    """A new webhook and its signing secret (returned this once; stored encrypted)."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    webhook = Webhook.objects.create(
        owner=owner, url=url, events=sorted(set(events)), secret={"secret": secret}
    )
    return webhook, secret


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def deliveries_record(*, account_id: int, type: str, data: dict) -> list[WebhookDelivery]:
    """Record a notification for each active webhook of the account's owner that wants `type`,
    inside the caller's transaction; each is published once that transaction commits."""
    owned = Webhook.objects.filter(owner__calendar_accounts__id=account_id, active=True)
    webhooks = [w for w in owned.only("id", "events") if type in w.events]
    if not webhooks:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(webhook=w, type=type, data=data) for w in webhooks]
    )
    ids = [str(d.pk) for d in deliveries]
    transaction.on_commit(lambda: _publish_all(ids))
    return deliveries


def events_changed_record(*, account_id: int, calendar_id: int, plan) -> None:
    """`events.changed` for what a batch stored (ids of created, updated, deleted events),
    at most MAX_IDS ids a delivery."""
    created = [pk for pk in plan.created_ids if pk is not None]
    updated = [pk for pk in plan.updated_ids if pk is not None]
    deleted = list(plan.delete_ids)
    while created or updated or deleted:
        room = MAX_IDS
        part = {}
        for name, ids in (("created", created), ("updated", updated), ("deleted", deleted)):
            part[name], ids[:] = ids[:room], ids[room:]
            room -= len(part[name])
        deliveries_record(
            account_id=account_id,
            type=Webhook.Type.EVENTS_CHANGED,
            data={"account": account_id, "calendar": calendar_id, **part},
        )


def _publish_all(ids: list[str]) -> None:
    for delivery_id in ids:
        try:
            broker.publish_delivery(delivery_id=delivery_id)
        except BROKER_ERRORS:
            # The reaper sends deliveries left unsent (`deliveries_resend`).
            logger.warning("webhook delivery %s: could not publish it", delivery_id)


def delivery_send(*, delivery_id: str) -> str:
    """POST one delivery (the webhooks queue's task); returns its state afterwards."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != WebhookDelivery.State.PENDING:
        return delivery.state if delivery else "missing"
    webhook = delivery.webhook
    if not webhook.active:
        return _give_up(delivery, "The webhook is not active.")
    body = json.dumps(
        {
            "id": str(delivery.pk),
            "type": delivery.type,
            "created_at": delivery.created_at.isoformat(),
            "data": delivery.data,
        }
    ).encode()
    started = time.monotonic()
    status, error = None, ""
    try:
        response = http.session().post(
            webhook.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "Caly-Signature": signature(webhook.secret["secret"], int(time.time()), body),
            },
            timeout=settings.CALY_WEBHOOK_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}: {response.text[:RESPONSE_KEPT]}"
        response.close()
    except (niquests.exceptions.RequestException, ProviderError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:RESPONSE_KEPT]
    duration = int((time.monotonic() - started) * 1000)
    now = timezone.now()
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery, at=now, status_code=status, error=error, duration_ms=duration
        )
        delivery.attempts += 1
        if not error:
            delivery.state, delivery.delivered_at = WebhookDelivery.State.DELIVERED, now
            delivery.save(update_fields=["state", "delivered_at", "attempts"])
            if webhook.failing_since is not None:
                Webhook.objects.filter(pk=webhook.pk).update(failing_since=None)
            return delivery.state
        delivery.save(update_fields=["attempts"])
        if webhook.failing_since is None:
            Webhook.objects.filter(pk=webhook.pk, failing_since=None).update(failing_since=now)
    return _retry_or_give_up(delivery, webhook, now)


def _retry_or_give_up(delivery: WebhookDelivery, webhook: Webhook, now: dt.datetime) -> str:
    window = dt.timedelta(hours=settings.CALY_WEBHOOK_RETRY_HOURS)
    if webhook.failing_since is not None and webhook.failing_since < now - window:
        Webhook.objects.filter(pk=webhook.pk).update(active=False)
        logger.warning("webhook %s deactivated: its deliveries failed for a day", webhook.pk)
    if now - delivery.created_at > window:
        return _give_up(delivery, "Given up after a day of failed attempts.")
    delay = backoff(
        attempt=delivery.attempts - 1,
        base=settings.CALY_WEBHOOK_RETRY_BASE_SECONDS,
        cap=3600,
    )
    try:
        broker.publish_delivery(delivery_id=str(delivery.pk), delay=max(1, round(delay)))
    except BROKER_ERRORS:
        logger.warning("webhook delivery %s: could not queue its retry", delivery.pk)
    return delivery.state


def _give_up(delivery: WebhookDelivery, reason: str) -> str:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state=WebhookDelivery.State.FAILED)
    logger.info("webhook delivery %s failed: %s", delivery.pk, reason)
    return WebhookDelivery.State.FAILED


def deliveries_resend(*, older_than: dt.timedelta) -> int:
    """Publish again deliveries never tried for `older_than` (their publish was lost to a
    broker outage); called by the reaper."""
    stale = WebhookDelivery.objects.filter(
        state=WebhookDelivery.State.PENDING,
        attempts=0,
        created_at__lt=timezone.now() - older_than,
    ).values_list("pk", flat=True)[:1000]
    ids = [str(pk) for pk in stale]
    _publish_all(ids)
    return len(ids)
