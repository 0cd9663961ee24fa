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
import gc
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
    # What the process has loaded by now (Django, the apps, the libraries) lives as long as it
    # does: out of the collector's sight, a full collection takes a few milliseconds instead of
    # about a hundred with every slot of the process stopped (bench/RESULTS.md, "queue").
    gc.freeze()
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


# --- a line per sync run (logger "caly.runs", CALY_RUN_LOG_LEVEL) ---------------------------
run_logger = logging.getLogger("caly.runs")


def _run_of(args, kwargs):
    """The SyncRun a sync.run_sync task is about (with its account), if it is still there."""
    from sync.models import SyncRun

    run_id = args[0] if args else (kwargs or {}).get("run_id")
    return SyncRun.objects.select_related("account").filter(pk=run_id).first(), run_id


@signals.task_prerun.connect(dispatch_uid="caly.log_run_start")
def log_run_start(sender=None, args=None, kwargs=None, **extra):
    """ "sync #12 of 'Work' (dashboard) starting", when asked for (the demo's console)."""
    if getattr(sender, "name", None) != RUN_SYNC or not run_logger.isEnabledFor(logging.INFO):
        return
    run, run_id = _run_of(args, kwargs)
    if run is None:
        run_logger.info("sync #%s: withdrawn before it started", run_id)
        return
    run_logger.info("sync #%s of %r (%s) starting", run.pk, run.account.name, run.trigger)


@signals.task_postrun.connect(dispatch_uid="caly.log_run_end")
def log_run_end(sender=None, args=None, kwargs=None, **extra):
    """How the run ended, in the words of its stored state: time taken, changes or error."""
    if getattr(sender, "name", None) != RUN_SYNC or not run_logger.isEnabledFor(logging.INFO):
        return
    from sync.wording import run_changes, run_took

    run, run_id = _run_of(args, kwargs)
    if run is None:
        return
    if run.state == run.State.QUEUED:
        if run.deferred:
            why = "waits for the account's running sync"
        elif run.retry_at:
            why = f"tries again later: {run.error}" if run.error else "tries again later"
        else:
            why = "handed back to the queue: this worker is stopping"
        run_logger.info("sync #%s of %r %s", run.pk, run.account.name, why)
        return
    took = f" in {run_took(run)}" if run.finished_at and run.started_at else ""
    outcome = run.error if run.state == run.State.FAILED else run_changes(run)
    run_logger.info("sync #%s of %r %s%s: %s", run.pk, run.account.name, run.state, took, outcome)
