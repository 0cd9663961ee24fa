"""The Celery app of Caly, its queues and the worker start/stop hooks."""

import logging
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "caly.settings")

app = Celery("caly")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger("caly.worker")


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def scrub_worker_logs(logger=None, **kwargs):
    """Celery replaces the logging handlers in a worker; give its handlers the secret filter."""
    from caly.scrub import install_filter

    install_filter(logger)


@signals.worker_init.connect
def open_shared_resources(sender=None, **kwargs):
    """Open the HTTP pool the provider clients share, sized to this worker's slots."""
    from sync import http

    slots = sender.concurrency if sender is not None else 1
    http.open_pool(slots=slots)
    _keep_db_connections_per_thread()
    logger.info(
        "worker %s ready: %s slots (%s pool), queues %s",
        getattr(sender, "hostname", "?"),
        slots,
        getattr(getattr(sender, "pool_cls", None), "__name__", "?"),
        ", ".join(sorted(q.name for q in app.amqp.queues.values())),
    )


def _keep_db_connections_per_thread() -> None:
    """Pool threads keep their database connection between tasks (see settings.DATABASES).

    Set before any task thread connects; a connection past its age, or broken, is replaced by
    the task_postrun hook below.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if not database["ENGINE"].endswith("sqlite3"):
        database["CONN_MAX_AGE"] = settings.CALY_WORKER_DB_CONN_MAX_AGE


@signals.task_received.connect
def note_sync_taken(request=None, **kwargs):
    """A sync run starts when a worker slot takes its message off the queue (README, "Start
    order"): noted here, in the consumer, as it arrives, not when its thread gets to run it."""
    if request is not None and request.name == "sync.run_sync":
        from sync import lifecycle

        lifecycle.message_taken(request.id)


@signals.worker_shutting_down.connect
def begin_shutdown(sig=None, how=None, **kwargs):
    """SIGTERM (warm shutdown): running syncs get a grace period, then hand their runs back."""
    from django.conf import settings

    from sync import lifecycle

    lifecycle.shutdown_begun()
    logger.info(
        "%s shutdown on %s: running syncs have %ss to finish, then go back to the queue",
        how,
        sig,
        settings.CALY_SHUTDOWN_GRACE_SECONDS,
    )


@signals.worker_shutdown.connect
def close_shared_resources(sender=None, **kwargs):
    """Close pooled HTTP connections and database connections on the way out."""
    from django.db import connections

    from sync import http

    http.close_pool()
    connections.close_all()
    logger.info("worker %s stopped", getattr(sender, "hostname", "?"))


@signals.task_postrun.connect
def close_task_db_connections(**kwargs):
    """Close the task thread's connection if it is broken or past its age (one per pool thread)."""
    from django.db import close_old_connections

    close_old_connections()
