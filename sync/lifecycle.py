"""What a running sync needs to know about its worker process, and the Celery worker hooks that
tell it: when its message was taken, and is the process shutting down?

`SyncConfig.ready()` imports this module, which connects the hooks below. As a sync message
arrives, the worker's consumer stamps the time on the message's request (`task_received`): that
is when the run started, as far as the start-order promise goes, and the task reads it back with
`received_at(self.request)`. The worker's SIGTERM hook calls `shutdown_begun()`; a sync checks
`should_hand_back()` between batches and, once the grace period is over, stops and hands its run
back to the queue.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from celery import signals
from django.conf import settings
from django.utils import timezone

from sync import http

logger = logging.getLogger("caly.worker")

# The task a sync message calls (sync/tasks.py); only its messages are stamped.
RUN_SYNC = "sync.run_sync"
# The request field the consumer stamps: Celery hands a request's fields to the task's
# `self.request`, so the time travels with the message, in the same process.
RECEIVED_AT = "caly_received_at"

_lock = threading.Lock()
_shutdown_at: float | None = None


def message_taken(request) -> dt.datetime:
    """Note that a worker slot took this message (called in the consumer, as it arrives)."""
    now = timezone.now()
    request.request_dict[RECEIVED_AT] = now
    return now


def received_at(request) -> dt.datetime | None:
    """When the message of the task running with `request` (its `self.request`) was taken.

    The task's thread may start it later than that when the process is busy: the slot was
    the message's from the moment it arrived. None if this process did not note it.
    """
    return getattr(request, RECEIVED_AT, None)


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


# --- the worker's hooks -------------------------------------------------------------------
# Connected once per process (dispatch_uid), whoever imports this module first.
@signals.after_setup_logger.connect(dispatch_uid="caly.scrub_worker_logs")
@signals.after_setup_task_logger.connect(dispatch_uid="caly.scrub_worker_task_logs")
def scrub_worker_logs(logger=None, **kwargs):
    """Celery replaces the logging handlers in a worker; give its handlers the secret filter."""
    from caly.scrub import install_filter

    install_filter(logger)


@signals.worker_init.connect(dispatch_uid="caly.open_shared_resources")
def open_shared_resources(sender=None, **kwargs):
    """Open the HTTP pool the provider clients share, sized to this worker's slots."""
    slots = sender.concurrency if sender is not None else 1
    http.open_pool(slots=slots)
    _keep_db_connections_per_thread()
    app = getattr(sender, "app", None)
    queues = app.amqp.queues.values() if app is not None else ()
    logger.info(
        "worker %s ready: %s slots (%s pool), queues %s",
        getattr(sender, "hostname", "?"),
        slots,
        getattr(getattr(sender, "pool_cls", None), "__name__", "?"),
        ", ".join(sorted(q.name for q in queues)),
    )


def _keep_db_connections_per_thread() -> None:
    """Pool threads keep their database connection between tasks (see settings.DATABASES).

    Set before any task thread connects; a connection past its age, or broken, is replaced by
    the task_postrun hook below.
    """
    database = settings.DATABASES["default"]
    if not database["ENGINE"].endswith("sqlite3"):
        database["CONN_MAX_AGE"] = settings.CALY_WORKER_DB_CONN_MAX_AGE


@signals.task_received.connect(dispatch_uid="caly.note_sync_taken")
def note_sync_taken(request=None, **kwargs):
    """A sync run starts when a worker slot takes its message off the queue (README, "Start
    order"): noted here, in the consumer, as it arrives, not when its thread gets to run it."""
    if request is not None and request.name == RUN_SYNC:
        message_taken(request)


@signals.worker_shutting_down.connect(dispatch_uid="caly.begin_shutdown")
def begin_shutdown(sig=None, how=None, **kwargs):
    """SIGTERM (warm shutdown): running syncs get a grace period, then hand their runs back."""
    shutdown_begun()
    logger.info(
        "%s shutdown on %s: running syncs have %ss to finish, then go back to the queue",
        how,
        sig,
        settings.CALY_SHUTDOWN_GRACE_SECONDS,
    )


@signals.worker_shutdown.connect(dispatch_uid="caly.close_shared_resources")
def close_shared_resources(sender=None, **kwargs):
    """Close pooled HTTP connections and database connections on the way out."""
    from django.db import connections

    http.close_pool()
    connections.close_all()
    logger.info("worker %s stopped", getattr(sender, "hostname", "?"))


@signals.task_postrun.connect(dispatch_uid="caly.close_task_db_connections")
def close_task_db_connections(**kwargs):
    """Close the task thread's connection if it is broken or past its age (one per pool thread)."""
    from django.db import close_old_connections

    close_old_connections()
