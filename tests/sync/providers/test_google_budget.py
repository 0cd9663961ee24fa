"""The per-user request budget (`sync.budget`) that keeps Google's per-user quota untripped."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from sync.budget import BudgetExhausted, budget_spend
from sync.models import RequestBudget

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
