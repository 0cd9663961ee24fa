"""The per-user request budget (`sync.budget`) that keeps Google's per-user quota untripped."""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import pytest
from django.db import connection

from calendars.models import Account, Event
from sync import selectors, services
from sync.budget import BudgetExhausted, budget_spend
from sync.models import RequestBudget
from sync.providers import provider_for
from sync.providers.base import TransientError
from sync.remote import Cursor
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_callers_never_exceed_the_budget_in_any_window():
    requests, window = 20, 1.5
    sent: list[float] = []
    lock = threading.Lock()

    def caller():
        try:
            for _ in range(10):
                wait = budget_spend(key="test:alice", requests=requests, window=window, max_wait=10)
                time.sleep(wait)
                with lock:
                    sent.append(time.monotonic())
        finally:
            connection.close()

    threads = [threading.Thread(target=caller) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(sent) == 30
    sent.sort()
    # A little slack for the scheduler between a caller's wake-up and its timestamp.
    busiest = max(sum(1 for t in sent if s <= t < s + window - 0.05) for s in sent)
    assert busiest <= requests
    # A burst of 2, then (20 - 2) per 1.5 s: 28 more requests need about 2.3 s.
    assert sent[-1] - started >= (30 - 2) * window / (requests - 2) - 0.1


def test_a_long_wait_is_refused_and_reserves_nothing():
    for _ in range(3):
        assert budget_spend(key="test:bob", requests=30, window=3.0, max_wait=0) == 0
    before = RequestBudget.objects.get(key="test:bob").next_free_at
    with pytest.raises(BudgetExhausted) as caught:
        budget_spend(key="test:bob", requests=30, window=3.0, max_wait=0)
    assert 0 < caught.value.wait <= 3.0 / 27
    assert RequestBudget.objects.get(key="test:bob").next_free_at == before


def test_budgets_of_different_users_are_independent():
    for _ in range(3):
        budget_spend(key="test:carol", requests=30, window=3.0, max_wait=0)
    assert budget_spend(key="test:dave", requests=30, window=3.0, max_wait=0) == 0


# --- whose budget a Google account spends ------------------------------------------------------
@pytest.fixture
def tight_budget(settings, google):
    for name, value in google.settings().items():
        setattr(settings, name, value)
    # A burst of 10 requests, then one every 40 s; no waiting in place.
    settings.CALY_GOOGLE_USER_REQUESTS = 100
    settings.CALY_GOOGLE_USER_WINDOW_SECONDS = 3600
    settings.CALY_GOOGLE_MAX_WAIT_SECONDS = 0
    return settings


def sync(account: Account) -> None:
    """One sync of every calendar of the account, in-process, as a worker runs it."""
    account.refresh_from_db()
    provider = provider_for(account)
    try:
        remote = provider.discover()
        by_id = {r.remote_id: r for r in remote}
        for listed in services.calendars_reconcile(account=account, remote=remote):
            calendar = listed.calendar
            etags = functools.partial(selectors.stored_etags, calendar_id=calendar.pk)
            changes = provider.changes(
                by_id[calendar.remote_id], cursor=Cursor(), stored_etags=etags
            )
            for batch in changes:
                services.events_apply(calendar=calendar, batch=batch)
    finally:
        provider.close()


def test_an_account_naming_another_google_user_spends_only_its_own_budget(
    api, google, tight_budget
):
    victim = google.add_user()
    google.insert_event(victim, summary="Dentist")
    victims_account = services.account_connect(
        owner=make_user("victim"),
        provider="google",
        name="Mine",
        credentials={"refresh_token": victim.refresh_token},
    )
    # Another user connects a Google account of their own, then says it is the victim's.
    intruder = google.add_user()
    connected = api.post(
        "/api/accounts/",
        {
            "provider": "google",
            "name": "Not mine",
            "username": victim.email,
            "refresh_token": intruder.refresh_token,
        },
        format="json",
    )
    assert connected.status_code == 201, connected.json()
    renamed = api.patch(
        f"/api/accounts/{connected.json()['id']}/", {"username": victim.email}, format="json"
    )
    assert renamed.status_code == 400 and set(renamed.json()) == {"username"}
    # Even with the victim's address stored as its username (written in the database), it
    # spends the budget of the Google user its token is.
    Account.objects.filter(pk=connected.json()["id"]).update(username=victim.email)
    intruders_account = Account.objects.get(pk=connected.json()["id"])
    for _ in range(12):
        with contextlib.suppress(TransientError):  # its own budget is used up
            sync(intruders_account)

    sync(victims_account)

    assert [e.summary for e in Event.objects.filter(calendar__account=victims_account)] == [
        "Dentist"
    ]
