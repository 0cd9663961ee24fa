"""What a running sync needs to know about its worker process: when its message was taken, and
is the process shutting down?

The worker's consumer calls `message_taken()` as a sync message arrives (a `task_received` hook);
the sync reads the time back with `taken_at()`: that is when the run started, as far as the
start-order promise goes. The worker's SIGTERM hook calls `shutdown_begun()`; a sync checks
`should_hand_back()` between batches and, once the grace period is over, stops and hands its run
back to the queue.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from django.conf import settings
from django.utils import timezone

_lock = threading.Lock()
_shutdown_at: float | None = None

# Task id -> when this process took the message off the queue. Its task pops it, so at most a
# worker's prefetch of entries wait here; messages taken but never run (revoked) are cleared
# once this many pile up.
_taken: dict[str, dt.datetime] = {}
TAKEN_KEPT = 10_000


def message_taken(task_id: str) -> None:
    """Note that a worker slot took this message (called in the consumer, as it arrives)."""
    if len(_taken) >= TAKEN_KEPT:
        _taken.clear()
    _taken[task_id] = timezone.now()


def taken_at(task_id: str) -> dt.datetime | None:
    """When the message of this task was taken (once; None if not noted in this process).

    The task's thread may start it later than that when the process is busy: the slot was
    the message's from the moment it arrived.
    """
    return _taken.pop(task_id, None)


def shutdown_begun() -> None:
    global _shutdown_at
    with _lock:
        if _shutdown_at is None:
            _shutdown_at = time.monotonic()


def should_hand_back() -> bool:
    """True once the worker has been shutting down for longer than the grace period."""
    started = _shutdown_at
    return (
        started is not None and time.monotonic() - started >= settings.CALY_SHUTDOWN_GRACE_SECONDS
    )
