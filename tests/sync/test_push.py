"""Google push in: watch channels opened, renewed and stopped by beat's task, notifications from
the Google fake (real HTTP POSTs to the live server) queueing one sync of the calendar that
changed — and, with real workers, the change reaching a webhook and the change feed."""

from __future__ import annotations

import json

import pytest

from calendars.models import Calendar
from sync import services
from sync.models import SyncRun, WatchChannel
from sync.services import push
from tests.factories import make_user
from tests.support.polling import wait_for
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def pushing(settings, google, live_server, lab):
    """Caly reachable by the fake at the live server's address, talking to the fake; on queues
    of the test's own (`lab`), which no worker consumes unless the test starts one."""
    for name, value in google.settings().items():
        setattr(settings, name, value)
    settings.CALY_PUBLIC_URL = live_server.url
    return settings


@pytest.fixture
def connected(google, pushing):
    person = google.add_user()
    account = services.account_connect(
        owner=make_user(),
        provider="google",
        name="Google",
        credentials={"refresh_token": person.refresh_token},
    )
    calendar = Calendar.objects.get(account=account, remote_id=person.primary)
    run_now(services.sync_request_account(account=account, trigger="api", publish=False))
    return person, account, calendar


def run_now(run: SyncRun) -> SyncRun:
    """What a worker does with the run's message, in this process."""
    services.sync_run_execute(run_id=run.pk)
    run.refresh_from_db()
    return run


def queued_push(account) -> SyncRun | None:
    return SyncRun.objects.filter(account=account, state="queued", trigger="push").first()


def test_a_change_on_google_queues_one_sync_of_that_calendar_only(google, connected):
    person, account, calendar = connected
    assert services.channels_maintain()["opened"] == [calendar.pk]
    channel = WatchChannel.objects.get(calendar=calendar)
    (live,) = google.channels(person)
    assert live["id"] == str(channel.channel_id)
    wait_for(lambda: google.notifications(str(channel.channel_id)), what="the sync message")
    assert queued_push(account) is None  # `sync` says nothing changed

    for i in range(10):  # a burst: one queued run
        google.insert_event(person, summary=f"Pushed {i}")
    wait_for(
        lambda: (
            len(
                [n for n in google.notifications(str(channel.channel_id)) if n["state"] == "exists"]
            )
            >= 1
        ),
        what="exists notifications",
    )
    run = wait_for(lambda: queued_push(account), what="a push-triggered run")
    wait_for(
        lambda: all(n.get("status") == 200 for n in google.notifications(str(channel.channel_id))),
        what="every notification answered",
    )
    assert SyncRun.objects.filter(account=account, state="queued").count() == 1
    assert run.calendar_id == calendar.pk

    before = len(google.api_requests(person))
    run = run_now(run)
    assert run.state == "succeeded" and run.created == 10
    asked = [r.method_id for r in google.api_requests(person)[before:]]
    assert asked == ["calendar.events.list"]  # one listing by sync token, no calendar list


def test_a_forged_or_unknown_notification_changes_nothing(client, connected):
    person, account, calendar = connected
    services.channels_maintain()
    channel = WatchChannel.objects.get(calendar=calendar)
    headers = {
        "HTTP_X_GOOG_CHANNEL_ID": str(channel.channel_id),
        "HTTP_X_GOOG_RESOURCE_STATE": "exists",
        "HTTP_X_GOOG_CHANNEL_TOKEN": "not-the-token",
    }
    assert client.post("/hooks/google/", **headers).status_code == 200
    unknown = {**headers, "HTTP_X_GOOG_CHANNEL_ID": "5d0cbd67-5f3b-4a8e-9a53-2d0e6e0f0c1a"}
    assert client.post("/hooks/google/", **unknown).status_code == 200
    assert queued_push(account) is None
    assert (
        push.notification_receive(
            channel_id=str(channel.channel_id), token="not-the-token", state="exists"
        )
        == "forged"
    )


def test_channels_are_renewed_before_they_expire_and_stopped_when_not_wanted(
    google, connected, pushing
):
    person, account, calendar = connected
    services.channels_maintain()
    first = WatchChannel.objects.get(calendar=calendar)
    # Less than CALY_PUSH_RENEW_BEFORE_SECONDS left: a new channel replaces it.
    pushing.CALY_PUSH_RENEW_BEFORE_SECONDS = pushing.CALY_PUSH_CHANNEL_TTL_SECONDS + 60
    assert services.channels_maintain()["opened"] == [calendar.pk]
    second = WatchChannel.objects.get(calendar=calendar)
    assert second.channel_id != first.channel_id
    assert [c["id"] for c in google.channels(person)] == [str(second.channel_id)]

    Calendar.objects.filter(pk=calendar.pk).update(selected=False)  # deselected: stopped
    pushing.CALY_PUSH_RENEW_BEFORE_SECONDS = 3600
    assert services.channels_maintain()["stopped"] == [calendar.pk]
    assert google.channels(person) == [] and not WatchChannel.objects.exists()


def test_without_a_public_url_there_are_no_channels(connected, pushing):
    pushing.CALY_PUBLIC_URL = ""
    assert services.channels_maintain() == {"opened": [], "stopped": []}
    assert not WatchChannel.objects.exists()


def test_a_change_on_google_reaches_the_webhook_and_the_change_feed(
    lab, api, user, google, pushing
):
    """The whole path with real workers: the fake's notification → /hooks/google/ → one run of
    that calendar → events.changed signed to the receiver, and the event in /api/changes/."""
    lab.configure(**google.settings(), CALY_PUBLIC_URL=pushing.CALY_PUBLIC_URL)
    lab.start_worker(threads=2)
    receiver = Receiver()
    try:
        person = google.add_user()
        account = services.account_connect(
            owner=user,
            provider="google",
            name="Google",
            credentials={"refresh_token": person.refresh_token},
        )
        run = services.sync_request_account(account=account, trigger="api")
        wait_for(lambda: SyncRun.objects.get(pk=run.pk).state == "succeeded", what="the first sync")
        cursor = api.get("/api/changes/").json()["cursor"]
        hook = api.post(
            "/api/webhooks/", {"url": receiver.url, "events": ["events.changed"]}, format="json"
        ).json()
        services.channels_maintain()

        created = google.insert_event(person, summary="From the phone")
        delivery = wait_for(lambda: receiver.received, timeout=30, what="the webhook delivery")
        payload = json.loads(delivery[0].body)
        assert payload["type"] == "events.changed" and len(payload["data"]["created"]) == 1
        assert hook["secret"]  # signature checks: tests/sync/test_webhooks.py

        def in_feed():
            body = api.get(f"/api/changes/?cursor={cursor}").json()
            return [c for c in body["changes"] if c["event"]["uid"] == created["iCalUID"]]

        (change,) = wait_for(in_feed, timeout=30, what="the event in the change feed")
        assert change["type"] == "upsert" and change["event"]["summary"] == "From the phone"
        assert SyncRun.objects.filter(account=account, trigger="push").exists()
    finally:
        receiver.stop()
