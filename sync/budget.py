"""Request budgets shared by every worker: at most N requests per W seconds for one key.

Google allows each user a fixed number of Calendar API requests a minute, counted over all of
Caly's workers at once. The budget is a generic cell rate algorithm (a token bucket kept as one
timestamp per key) in the database: each request reserves the next free slot under a row lock.
A burst of N/10 requests goes out at once, the rest at a steady (N − N/10)/W per second, so no
window of W seconds ever holds more than N requests.
"""

from __future__ import annotations

import time

from django.db import transaction

from sync.models import RequestBudget


class BudgetExhausted(Exception):
    """The next free slot is further away than the caller is willing to wait."""

    def __init__(self, wait: float):
        super().__init__(f"request budget exhausted for {wait:.1f} s")
        self.wait = wait


def budget_spend(*, key: str, requests: int, window: float, max_wait: float) -> float:
    """Reserve one request for `key`; returns how long to wait before sending it.

    Raises BudgetExhausted (reserving nothing) if that wait would exceed `max_wait`.
    """
    requests = max(int(requests), 1)
    burst = max(1, requests // 10)
    interval = window / max(requests - burst, 1)
    tolerance = (burst - 1) * interval
    RequestBudget.objects.get_or_create(key=key)
    with transaction.atomic():
        budget = RequestBudget.objects.select_for_update().get(key=key)
        now = time.time()  # read under the lock: reservations stay in order
        free_at = max(budget.next_free_at, now)
        wait = free_at - tolerance - now
        if wait > max_wait:
            raise BudgetExhausted(wait)
        budget.next_free_at = free_at + interval
        budget.save(update_fields=["next_free_at"])
    return max(wait, 0.0)
