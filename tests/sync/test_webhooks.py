"""Webhooks out: registered through the API, recorded with the change, delivered signed by real
workers from their own queue, retried after a failure, every attempt visible."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from sync.models import SyncRun, Webhook, WebhookDelivery
from sync.services import sync_request_account
from tests.support.polling import wait_for
from tests.support.queue_lab import make_fake_accounts
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """What a receiver does (docs/webhooks.md): check the signature and its age."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    timestamp, signature = int(parts["t"]), parts["v1"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected.hexdigest(), signature)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


def register(api, url: str, events: list[str]) -> dict:
    response = api.post("/api/webhooks/", {"url": url, "events": events}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_registering_shows_the_secret_once_and_refuses_bad_input(api, receiver):
    created = register(api, receiver.url, ["events.changed", "sync.failed"])
    assert created["secret"].startswith("whsec_") and created["active"] is True
    listed = api.get("/api/webhooks/").json()["results"]
    assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]
    for body, field in (
        ({"url": "ftp://127.0.0.1/x", "events": ["sync.failed"]}, "url"),
        ({"url": receiver.url, "events": ["events.exploded"]}, "events"),
        ({"url": receiver.url, "events": []}, "events"),
    ):
        response = api.post("/api/webhooks/", body, format="json")
        assert response.status_code == 400 and field in response.json(), response.json()
    assert api.delete(f"/api/webhooks/{created['id']}/").status_code == 204
    assert not Webhook.objects.exists()


def test_a_sync_s_changes_are_delivered_signed_and_retried_after_a_500(lab, api, user, receiver):
    lab.configure(CALY_WEBHOOK_RETRY_BASE_SECONDS=1)
    lab.start_worker(threads=2)
    receiver.statuses = [500]  # the first attempt fails, the retry gets a 200
    hook = register(api, receiver.url, ["events.changed"])
    (account,) = make_fake_accounts(user, 1, events=3)
    run = sync_request_account(account=account, trigger=SyncRun.Trigger.API)

    wait_for(lambda: len(receiver.received) >= 2, timeout=60, what="the delivery and its retry")
    first, again = receiver.received[:2]
    assert first.body == again.body  # the same delivery, sent again
    payload = json.loads(again.body)
    assert payload["type"] == "events.changed"
    assert payload["data"]["account"] == account.pk and len(payload["data"]["created"]) == 3
    assert verify(hook["secret"], again.headers["Caly-Signature"], again.body)
    assert not verify("whsec_wrong", again.headers["Caly-Signature"], again.body)

    delivery = wait_for(
        lambda: WebhookDelivery.objects.filter(state="delivered").first(), timeout=30
    )
    shown = api.get(f"/api/webhooks/{hook['id']}/deliveries/").json()["results"]
    assert [a["status_code"] for a in shown[0]["attempts"]] == [500, 200]
    assert shown[0]["id"] == str(delivery.pk) == payload["id"]
    assert SyncRun.objects.get(pk=run.pk).state == SyncRun.State.SUCCEEDED


def test_a_failed_sync_is_delivered_as_sync_failed(lab, api, user, receiver):
    lab.configure(CALY_SYNC_MAX_ATTEMPTS=1)
    lab.start_worker(threads=2)
    register(api, receiver.url, ["sync.failed"])
    (account,) = make_fake_accounts(user, 1, events=1, transient=5)
    run = sync_request_account(account=account, trigger=SyncRun.Trigger.API)
    wait_for(lambda: receiver.received, timeout=60, what="the sync.failed delivery")
    payload = json.loads(receiver.received[0].body)
    assert payload["type"] == "sync.failed"
    assert payload["data"]["run"] == run.pk and "Gave up" in payload["data"]["error"]
