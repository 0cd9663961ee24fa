"""Servers that misbehave cannot hurt Caly: the run records a clear error, what was stored stays
as it was, and the worker carries on with the next sync.

A real worker process syncs from `HostileCalDAV` (tests/support/hostile_server.py) on queues of
its own, with short limits so each misbehaviour is cut off within seconds: 2 s per read, 3 s of
waiting for one response, 16 MiB per streamed response (the defaults are 30 s, 300 s, 256 MiB).
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from django.conf import settings

from calendars.models import Account, Calendar, Event
from caly.queues import durable_queue
from sync.models import SyncRun
from tests.support.caldav_servers import vevent
from tests.support.hostile_server import SLOW_HEADERS_SECONDS, HostileCalDAV
from tests.support.polling import wait_for
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

LIMITS = {
    "CALY_HTTP_TIMEOUT": "2",
    "CALY_HTTP_DEADLINE_SECONDS": "3",
    "CALY_HTTP_MAX_STREAMED_BYTES": str(16 * 2**20),
    # A transient error (a timeout) fails the run at once instead of waiting out retries.
    "CALY_SYNC_MAX_ATTEMPTS": "1",
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="module")
def hostile_worker(django_db_setup, django_db_blocker):
    prefix = f"{settings.CALY_QUEUE_PREFIX}-hostile"
    with django_db_blocker.unblock():
        worker = start_worker(threads=2, env={"CALY_QUEUE_PREFIX": prefix, **LIMITS})
    worker.queue = durable_queue(f"{prefix}.sync", queue_type=settings.CALY_QUEUE_TYPE)
    yield worker
    worker.stop()
    from caly.celery import app

    with app.connection_for_write() as conn:
        for name in (f"{prefix}.sync", f"{prefix}.maintenance"):
            conn.default_channel.queue_delete(name)
            conn.default_channel.exchange_delete(name)


@pytest.fixture
def server():
    fake = HostileCalDAV()
    for i in range(3):
        fake.put(f"e{i}.ics", vevent(f"e{i}@example.com", summary=f"Meeting {i}"))
    yield fake
    fake.stop()


@pytest.fixture
def account(api, server):
    response = api.post(
        "/api/accounts/",
        {"provider": "caldav", "name": "Hostile", "url": server.url, "username": "u"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return Account.objects.get(pk=response.json()["id"])


def sync(worker, account: Account) -> SyncRun:
    """One sync of `account` on the hostile worker, waited for."""
    from sync.tasks import run_sync

    run = SyncRun.objects.create(account=account, trigger="api", task_id=str(uuid.uuid4()))
    run_sync.apply_async(
        args=[run.pk],
        task_id=run.task_id,
        queue=worker.queue,
        exchange=worker.queue.exchange,
        routing_key=worker.queue.routing_key,
        declare=[worker.queue],
    )

    def finished():
        run.refresh_from_db()
        return run if run.state in ("succeeded", "failed") else None

    return wait_for(finished, timeout=60, what=f"sync run {run.pk}")


def stored(account: Account) -> set[tuple]:
    return set(
        Event.objects.filter(calendar__account=account).values_list("uid", "summary", "etag")
    )


def cursors(account: Account) -> list[tuple]:
    return list(Calendar.objects.filter(account=account).values_list("sync_token", "ctag"))


@pytest.mark.parametrize(
    ("behaviour", "on", "expected"),
    [
        ("invalid_xml", "any", "invalid XML"),
        ("hang", "any", "did not answer in time"),
        ("redirect_loop", "any", "HTTP 308"),
        ("huge_length", "any", "sent more than 16 MiB in one response"),
        # Mid-sync, after the listing: nothing of the half-read answer is stored.
        ("endless", "multiget", "sent more than 16 MiB in one response"),
        ("trickle", "multiget", "took more than 3 s to send one response"),
        # A status line and headers trickled within every read timeout: the deadline still holds.
        ("slow_headers", "multiget", "took more than 3 s to send one response"),
        ("slow_headers", "sync", "took more than 3 s to send one response"),
        # What the HTTP client raises comes out in words, not as an internal error.
        ("bad_gzip", "multiget", "sent a compressed answer that does not decompress"),
        ("broken_chunked", "multiget", "broke off its answer"),
    ],
)
def test_a_misbehaving_server_fails_the_run_and_changes_nothing(
    hostile_worker, server, account, behaviour, on, expected
):
    first = sync(hostile_worker, account)
    assert first.state == "succeeded", first.error
    before, cursors_before = stored(account), cursors(account)
    assert len(before) == 3

    # Something new on the server, so that the sync has objects to fetch (multiget).
    server.put("new.ics", vevent("new@example.com", summary="New"))
    server.misbehave(behaviour, on=on)
    failed = sync(hostile_worker, account)
    assert failed.state == "failed"
    assert expected in failed.error, failed.error
    assert not failed.error.startswith("Internal error")
    # Given up within the limits (3 s per response, 2 s per read), whatever the server does.
    assert (failed.finished_at - failed.started_at).total_seconds() < SLOW_HEADERS_SECONDS / 2
    assert stored(account) == before
    assert cursors(account) == cursors_before

    server.behave()
    again = sync(hostile_worker, account)
    assert again.state == "succeeded", again.error
    assert len(stored(account)) == 4
    assert hostile_worker.alive()


def test_malformed_icalendar_is_skipped_and_the_rest_is_stored(hostile_worker, server, account):
    server.put("broken.ics", vevent("bad@example.com", start="the day after tomorrow"))
    server.put("no-uid.ics", vevent("x").replace("UID:x\r\n", ""))
    run = sync(hostile_worker, account)
    assert run.state == "succeeded", run.error
    assert {s["href"].rpartition("/")[2] for s in run.skipped} == {"broken.ics", "no-uid.ics"}
    assert all(s["reason"] for s in run.skipped)
    assert {uid for uid, _, _ in stored(account)} == {f"e{i}@example.com" for i in range(3)}


def test_a_10_mb_event_is_stored_and_the_worker_carries_on(hostile_worker, server, account):
    description = "\r\n ".join(["y" * 72] * (10 * 2**20 // 75))
    server.put(
        "huge.ics",
        vevent("huge@example.com", summary="Huge").replace(
            "SUMMARY:Huge", "SUMMARY:Huge\r\nDESCRIPTION:" + description
        ),
    )
    run = sync(hostile_worker, account)
    assert run.state == "succeeded", run.error
    huge = Event.objects.get(calendar__account=account, uid="huge@example.com")
    assert len(huge.description) > 10_000_000
    assert len(stored(account)) == 4

    server.put("huge.ics", vevent("huge@example.com", summary="Huge no more"))
    after = sync(hostile_worker, account)
    assert after.state == "succeeded", after.error
    assert (after.created, after.updated) == (0, 1)
    huge.refresh_from_db()
    assert (huge.summary, huge.description) == ("Huge no more", "")
    assert hostile_worker.alive()


def test_a_redirect_loop_when_connecting_is_a_400_naming_url(api, server):
    server.misbehave("redirect_loop")
    response = api.post(
        "/api/accounts/", {"provider": "caldav", "name": "Loop", "url": server.url}, format="json"
    )
    assert response.status_code == 400
    assert "redirected more than 10 times" in response.json()["url"][0]
    assert len(server.requests) <= 2 * 11  # two discovery candidates, ten redirects each at most


def _connect(api, server, *, username="u"):
    return api.post(
        "/api/accounts/",
        {"provider": "caldav", "name": "Hostile", "url": server.url, "username": username},
        format="json",
    )


def test_a_server_trickling_its_headers_when_connecting_is_a_400_within_the_deadline(
    api, server, settings
):
    settings.CALY_HTTP_TIMEOUT, settings.CALY_HTTP_DEADLINE_SECONDS = 1, 2
    server.misbehave("slow_headers")
    started = time.monotonic()
    response = _connect(api, server)
    took = time.monotonic() - started
    assert response.status_code == 400, response.json()
    assert "took more than 2 s to send one response" in response.json()["url"][0]
    # One request given up at the deadline (two discovery candidates at most), not the 20 s
    # the server would take.
    assert took < 2 * 2 + 3, took
    assert not Account.objects.exists()


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("bad_gzip", "sent a compressed answer that does not decompress"),
        ("broken_chunked", "broke off its answer"),
    ],
)
def test_an_unreadable_answer_when_connecting_is_a_400_naming_url(api, server, behaviour, expected):
    server.misbehave(behaviour)
    response = _connect(api, server)
    assert response.status_code == 400, response.content
    assert expected in response.json()["url"][0]
    assert not Account.objects.exists()


def test_a_calendar_at_an_over_long_address_is_left_out_when_connecting(api, server, caplog):
    server.calendars["/calendars/" + "x" * 2100 + "/"] = "Too long"
    caplog.set_level(logging.WARNING, logger="sync.services.accounts")
    response = _connect(api, server)
    assert response.status_code == 201, response.content
    account = Account.objects.get(pk=response.json()["id"])
    assert list(account.calendars.values_list("name", flat=True)) == ["Work"]
    assert "left out: their addresses are longer than 2000 characters" in caplog.text


def test_a_calendar_at_an_over_long_address_is_left_out_and_the_rest_syncs(
    hostile_worker, server, account
):
    server.calendars["/calendars/" + "x" * 2100 + "/"] = "Too long"
    run = sync(hostile_worker, account)
    assert run.state == "succeeded", run.error
    assert list(account.calendars.values_list("name", flat=True)) == ["Work"]
    assert len(stored(account)) == 3


def test_a_server_listing_only_over_long_addresses_is_a_400_naming_url(api, server):
    server.calendars = {"/calendars/" + "x" * 2100 + "/": "Too long"}
    response = _connect(api, server)
    assert response.status_code == 400, response.content
    assert "longer than 2,000 characters" in response.json()["url"][0]
    assert not Account.objects.exists()


def test_an_over_long_calendar_home_is_a_400_naming_url(api, server):
    server.home = "/" + "h" * 2100 + "/"
    response = _connect(api, server)
    assert response.status_code == 400, response.content
    assert "calendar home address is" in response.json()["url"][0]
    assert not Account.objects.exists()
