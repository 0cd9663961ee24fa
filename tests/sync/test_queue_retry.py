"""Retries of transient provider errors: backoff in the broker, never a sleeping slot.

A 429 with Retry-After puts the run back in the queue behind a delay queue on RabbitMQ; the
worker's only slot meanwhile syncs the requests behind it.
"""

from __future__ import annotations

import pytest

from sync.models import SyncRun
from sync.services import sync_request_account
from tests.support.polling import wait_for
from tests.support.queue_lab import make_fake_accounts, wait_all_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def request(accounts) -> list[int]:
    return [sync_request_account(account=a, trigger=SyncRun.Trigger.API).pk for a in accounts]


def key_of(account) -> str:
    return account.url.split("/")[3].split("?")[0]


def test_retry_after_is_honoured_without_holding_the_only_slot(lab, user, api):
    lab.configure(CALY_RETRY_BASE_SECONDS=0.1, CALY_SYNC_MAX_ATTEMPTS=3)
    lab.start_worker(threads=1)
    [limited] = make_fake_accounts(user, 1, transient=1, retry_after=3, events=2)
    others = make_fake_accounts(user, 5, delay=0.05, events=1)
    [limited_id] = request([limited])
    other_ids = request(others)

    # While it waits, the run is the account's queued run, with its attempt and error visible,
    # and asking again returns it instead of queueing another.
    waiting = wait_for(
        lambda: (
            api.get(f"/api/sync/{limited_id}/").json()
            if SyncRun.objects.filter(pk=limited_id, state="queued", attempts=1).exists()
            else None
        ),
        timeout=30,
        what="the rate-limited run to wait for its retry",
    )
    assert "429" in waiting["error"] and "Retrying in 3 s" in waiting["error"], waiting
    again = api.post("/api/sync/", {"account": limited.pk}, format="json")
    assert again.status_code == 202
    assert [r["id"] for r in again.json()["runs"]] == [limited_id]

    runs = wait_all_terminal([limited_id, *other_ids], timeout=60)
    assert {r.state for r in runs} == {"succeeded"}
    run = SyncRun.objects.get(pk=limited_id)
    assert (run.attempts, run.error, run.created) == (2, "", 2)

    log = lab.provider_log()
    failed_at = next(e["at"] for e in log if e["key"] == key_of(limited) and e["event"] == "failed")
    retried_at = [e["at"] for e in log if e["key"] == key_of(limited) and e["event"] == "start"][1]
    others_done = max(
        e["at"] for e in log if e["key"] in {key_of(a) for a in others} and e["event"] == "end"
    )
    assert retried_at - failed_at >= 3 - 0.05  # Retry-After honoured (whole seconds, broker TTL)
    assert others_done < retried_at  # the one slot kept working meanwhile


def test_retries_are_bounded(lab, user):
    lab.configure(CALY_RETRY_BASE_SECONDS=0.1, CALY_SYNC_MAX_ATTEMPTS=2)
    lab.start_worker(threads=1)
    [flaky] = make_fake_accounts(user, 1, transient=5, retry_after=1)
    [run_id] = request([flaky])

    [run] = wait_all_terminal([run_id], timeout=30)
    assert (run.state, run.attempts) == ("failed", 2)
    assert "429" in run.error and "Gave up after 2 attempts" in run.error
    flaky.refresh_from_db()
    assert "429" in flaky.last_error


def test_a_sync_past_its_deadline_continues_as_a_retry(lab, user):
    """Well below RabbitMQ's consumer_timeout, a long sync lets go of its message and goes on.

    Running out of time is progress, not failure: however many continuations a big first sync
    needs, they do not use up its attempts.
    """
    lab.configure(
        CALY_SYNC_DEADLINE_SECONDS=2, CALY_RETRY_BASE_SECONDS=0.1, CALY_SYNC_MAX_ATTEMPTS=1
    )
    lab.start_worker(threads=1)
    [big] = make_fake_accounts(user, 1, delay=0.4, batches=6, events=12)
    [run_id] = request([big])

    [run] = wait_all_terminal([run_id], timeout=60)
    assert (run.state, run.error) == ("succeeded", ""), run.error
    assert run.attempts == 1
    assert big.calendars.get().events.count() == 12
    starts = [e for e in lab.provider_log() if e["event"] == "start"]
    assert len(starts) >= 2
