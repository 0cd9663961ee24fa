"""What a running sync needs to know about its worker process: is it shutting down?

The worker's SIGTERM hook calls `shutdown_begun()`; a sync checks `should_hand_back()` between
batches and, once the grace period is over, stops and hands its run back to the queue.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

_lock = threading.Lock()
_shutdown_at: float | None = None


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
