"""Google accounts synced the way users get them synced: POST /api/sync/ → RabbitMQ → real worker
processes → the fake Google Calendar API on loopback → PostgreSQL.

This module runs its own queues and two worker processes pointed at the fake (CALY_GOOGLE_*), so
no other worker of the test run picks up its syncs, and the per-user request budget is shared by
separate processes as in production.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.conf import settings as django_settings

from calendars.models import Account, Event
from sync import services
from sync.models import SyncRun
from tests.factories import make_user
from tests.support.api_sync import TERMINAL, sync_and_wait
from tests.support.polling import wait_for
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

# The Google user's quota at the fake, and Caly's budget below it (Google's 600 vs Caly's 500 a
# minute, scaled down to seconds so the test is quick).
QUOTA = (36, 3.0)
BUDGET = {"CALY_GOOGLE_USER_REQUESTS": 30, "CALY_GOOGLE_USER_WINDOW_SECONDS": 3.0}
# Waits longer than this (budget or Retry-After) go back to the queue as a delayed retry.
MAX_WAIT = {"CALY_GOOGLE_MAX_WAIT_SECONDS": 2.0}


@pytest.fixture(scope="module")
def google_workers(django_db_setup, django_db_blocker, google):
    prefix = f"{django_settings.CALY_QUEUE_PREFIX}.google"
    env = {
        **google.settings(),
        **{k: str(v) for k, v in {**BUDGET, **MAX_WAIT}.items()},
        "CALY_QUEUE_PREFIX": prefix,
        # Every task received and succeeded logged too: the token check below reads them.
        "CALY_TASK_LOG_LEVEL": "INFO",
    }
    with django_db_blocker.unblock():
        workers = [start_worker(threads=4, env=env) for _ in range(2)]
    yield SimpleNamespace(prefix=prefix, workers=workers)
    for worker in workers:
        worker.stop()
    from caly.celery import app

    with app.connection_for_write() as conn:
        for name in (f"{prefix}.sync", f"{prefix}.maintenance"):
            conn.default_channel.queue_delete(name)
            conn.default_channel.exchange_delete(name)


@pytest.fixture(autouse=True)
def google_settings(settings, google, google_workers):
    """This process publishes to the module's queues and talks to the fake like the workers."""
    prefix = google_workers.prefix
    settings.CALY_QUEUE_PREFIX = prefix
    settings.CALY_SYNC_QUEUE = f"{prefix}.sync"
    settings.CALY_MAINTENANCE_QUEUE = f"{prefix}.maintenance"
    settings.CALY_WEBHOOK_QUEUE = f"{prefix}.webhooks"
    for name, value in {**google.settings(), **BUDGET, **MAX_WAIT}.items():
        setattr(settings, name, value)
    return settings


def connect(api, google_user) -> dict:
    response = api.post(
        "/api/accounts/",
        {"provider": "google", "name": "Google", "refresh_token": google_user.refresh_token},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def rows(account_id: int) -> dict[str, Event]:
    return {e.href: e for e in Event.objects.filter(calendar__account_id=account_id)}


def counts(run: dict) -> tuple:
    return (run["state"], run["created"], run["updated"], run["deleted"])


def test_initial_incremental_and_unchanged_syncs(api, google):
    user = google.add_user(page_size=5)
    ids = [
        google.insert_event(user, summary=f"Meeting {i}", start=f"2026-02-{i + 1:02d}T09:00:00Z")[
            "id"
        ]
        for i in range(12)
    ]
    account = connect(api, user)

    run = sync_and_wait(api, account["id"])
    assert counts(run) == ("succeeded", 12, 0, 0), run
    assert run["progress"]["events_processed"] == 12
    assert len(google.api_requests(user, "calendar.events.list")) == 3  # three pages
    calendar = api.get(f"/api/calendars/?account={account['id']}").json()["results"][0]
    events = api.get(f"/api/events/?calendar={calendar['id']}").json()["results"]
    assert sorted(e["summary"] for e in events) == sorted(f"Meeting {i}" for i in range(12))
    assert {e["uid"] for e in events} == {f"{i}@google.com" for i in ids}
    before = {href: e.pk for href, e in rows(account["id"]).items()}

    google.update_event(user, None, ids[3], summary="Moved")
    google.delete_event(user, None, ids[4])
    new = google.insert_event(user, summary="New", start="2026-03-01T09:00:00Z")
    run = sync_and_wait(api, account["id"])
    assert counts(run) == ("succeeded", 1, 1, 1), run
    after = rows(account["id"])
    assert after[ids[3]].summary == "Moved" and after[ids[3]].pk == before[ids[3]]
    assert ids[4] not in after and new["id"] in after

    # No change: one calendar list and one events.list by sync token; the access token is reused.
    api_before = len(google.api_requests(user))
    tokens_before = len(google.token_requests)
    run = sync_and_wait(api, account["id"])
    assert counts(run) == ("succeeded", 0, 0, 0), run
    methods = [r.method_id for r in google.api_requests(user)[api_before:]]
    assert sorted(methods) == ["calendar.calendarList.list", "calendar.events.list"]
    assert len(google.token_requests) - tokens_before <= 1  # one per worker process at most


def test_expired_sync_token_full_resync_keeps_row_ids(api, google):
    user = google.add_user(page_size=4)
    ids = [
        google.insert_event(user, summary=f"E{i}", start=f"2026-04-{i + 1:02d}T09:00:00Z")["id"]
        for i in range(9)
    ]
    account = connect(api, user)
    assert sync_and_wait(api, account["id"])["state"] == "succeeded"
    before = {href: e.pk for href, e in rows(account["id"]).items()}

    google.expire_sync_tokens(user)
    google.update_event(user, None, ids[0], summary="E0 again")
    google.delete_event(user, None, ids[8])
    run = sync_and_wait(api, account["id"])

    assert counts(run) == ("succeeded", 0, 1, 1), run
    assert any(r.status == 410 for r in google.api_requests(user, "calendar.events.list"))
    after = {href: e.pk for href, e in rows(account["id"]).items()}
    assert after == {href: pk for href, pk in before.items() if href != ids[8]}


def test_revoked_grant_fails_once_and_asks_to_reconnect(api, client, user, google):
    google_user = google.add_user()
    google.insert_event(google_user, summary="Before")
    account = connect(api, google_user)
    assert sync_and_wait(api, account["id"])["state"] == "succeeded"

    google.revoke(google_user)
    run = sync_and_wait(api, account["id"])
    assert run["state"] == "failed" and run["attempts"] == 1, run
    assert "invalid_grant" in run["error"] and "Reconnect" in run["error"]
    assert google_user.refresh_token not in run["error"]
    shown = api.get(f"/api/accounts/{account['id']}/").json()
    assert shown["status"] == "needs_reauth" and "Reconnect" in shown["last_error"]
    refused = api.post("/api/sync/", {"account": account["id"]}, format="json")
    assert refused.status_code == 400
    client.force_login(user)
    page = client.get("/").content.decode()
    assert "Needs re-authentication" in page
    assert Event.objects.filter(calendar__account_id=account["id"]).count() == 1  # kept

    # Reconnecting with a new grant makes the account active and syncable again.
    fresh = google.new_refresh_token(google_user)
    patched = api.patch(f"/api/accounts/{account['id']}/", {"refresh_token": fresh}, format="json")
    assert patched.json()["status"] == "active"
    assert sync_and_wait(api, account["id"])["state"] == "succeeded"


def test_rate_limits_and_server_errors_recover(api, google):
    user = google.add_user(page_size=3)
    for i in range(9):
        google.insert_event(user, summary=f"E{i}", start=f"2026-05-{i + 1:02d}T09:00:00Z")
    account = connect(api, user)
    on_pages = {"where": lambda q: "pageToken" in q}
    google.inject(user, status=403, reason="rateLimitExceeded", **on_pages)
    google.inject(user, status=429, retry_after=1, **on_pages)
    google.inject(user, status=500, method="calendar.calendarList.list")

    run = sync_and_wait(api, account["id"])
    assert counts(run) == ("succeeded", 9, 0, 0), run
    assert run["attempts"] == 1  # short waits are taken in place
    statuses = [r.status for r in google.api_requests(user)]
    assert statuses.count(403) == 1 and statuses.count(429) == 1 and statuses.count(500) == 1
    refused_at = next(r.at for r in google.api_requests(user) if r.status == 429)
    next_try = next(r.at for r in google.api_requests(user) if r.at > refused_at)
    assert next_try - refused_at >= 1.0  # Retry-After honoured


def test_long_retry_after_is_retried_later_by_the_queue(api, google):
    user = google.add_user()
    google.insert_event(user, summary="Eventually")
    account = connect(api, user)
    google.inject(user, status=429, retry_after=3)  # longer than CALY_GOOGLE_MAX_WAIT_SECONDS

    run = sync_and_wait(api, account["id"], timeout=90)
    assert counts(run) == ("succeeded", 1, 0, 0), run
    assert run["attempts"] == 2
    calls = google.api_requests(user, "calendar.events.list")
    assert [r.status for r in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 3.0


def test_interrupted_sync_resumes_without_duplicates(api, google):
    user = google.add_user(page_size=4)
    for i in range(10):
        google.insert_event(user, summary=f"E{i}", start=f"2026-06-{i + 1:02d}T09:00:00Z")
    account = connect(api, user)
    # The listing breaks off at the third page with an error that is not worth retrying.
    google.inject(user, status=None, where=lambda q: "pageToken" in q)  # page 2 goes through
    google.inject(user, status=400, reason="badRequest", where=lambda q: "pageToken" in q)
    run = sync_and_wait(api, account["id"])
    assert run["state"] == "failed", run
    assert Account.objects.get(pk=account["id"]).calendars.get().sync_token == ""
    partial = {href: e.pk for href, e in rows(account["id"]).items()}
    assert len(partial) == 8

    run = sync_and_wait(api, account["id"])
    assert counts(run) == ("succeeded", 10 - len(partial), 0, 0), run
    after = rows(account["id"])
    assert len(after) == 10
    assert {href: after[href].pk for href in partial} == partial


def test_parallel_syncs_of_one_google_user_stay_within_its_quota(google):
    """One Google user's account, connected by eight Caly users (a user connects it once),
    synced at once by two worker processes (8 slots)."""
    google_user = google.add_user(page_size=2)
    for i in range(10):
        google.insert_event(google_user, summary=f"E{i}", start=f"2026-07-{i + 1:02d}T09:00:00Z")
    accounts = [
        services.account_connect(
            owner=make_user(),
            provider="google",
            name=f"Copy {n}",
            credentials={"refresh_token": google_user.refresh_token},
        )
        for n in range(8)
    ]
    assert {a.username for a in accounts} == {google_user.email}
    google.set_quota(google_user, requests=QUOTA[0], window=QUOTA[1])
    before = len(google.api_requests(google_user))

    run_ids = [
        services.sync_request_account(account=a, trigger=SyncRun.Trigger.API).pk for a in accounts
    ]
    assert len(set(run_ids)) == 8
    wait_for(
        lambda: SyncRun.objects.filter(pk__in=run_ids, state__in=TERMINAL).count() == 8,
        timeout=120,
        what="the eight runs to finish",
    )
    runs = list(SyncRun.objects.filter(pk__in=run_ids))

    assert [r.state for r in runs] == ["succeeded"] * 8, [r.error for r in runs]
    assert all(r.created == 10 for r in runs)
    sent = len(google.api_requests(google_user)) - before
    assert sent >= 48 > QUOTA[0]  # 1 calendar list + 5 pages per account: more than one window
    assert google_user.quota_rejections == 0
    assert google_user.max_in_window <= QUOTA[0]
    # Caly's budget lets a burst of 3 go, then 9 a second. A worker process spends a sync's first
    # calendar list on the grant's own budget until Google has named the user, so the pace shows
    # in the event pages, each of them sent once the user's address is known.
    pages = [r.at for r in google.api_requests(google_user, "calendar.events.list")]
    assert len(pages) == 40
    assert max(pages) - min(pages) > (len(pages) - 3) / 9 - 0.5
    assert SyncRun.objects.filter(pk__in=run_ids, attempts__gt=1).count() == 0


def test_worker_logs_carry_no_google_tokens(google, google_workers):
    """Runs after the others: whatever they logged, no refresh or access token is in it."""
    logs = "".join(worker.log() for worker in google_workers.workers)
    assert "Task sync.run_sync[" in logs  # the workers did log their tasks
    for user in google.users.values():
        assert user.refresh_token not in logs
    assert "1//fake-" not in logs and "ya29." not in logs
