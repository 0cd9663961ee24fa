"""Celery tasks: thin, named for good, arguments are ids only."""

from celery import shared_task
from celery.exceptions import Reject
from django.utils import timezone

from sync import lifecycle, services


# The run's own state says when it started; a STARTED task result would cost a write per run.
@shared_task(name="sync.run_sync", acks_late=True, track_started=False)
def run_sync(run_id: int) -> dict:
    """Run one sync request. The message carries the SyncRun id and nothing else."""
    task_id = run_sync.request.id or ""
    result = services.sync_run_execute(
        run_id=run_id,
        task_id=task_id,
        worker=run_sync.request.hostname or "",
        received_at=lifecycle.received_at(run_sync.request) or timezone.now(),
    )
    if result.handed_back:
        # The worker is stopping: back into the queue where it was (classic queues), for
        # another worker to finish.
        raise Reject("worker shutting down", requeue=True)
    return result.summary()


@shared_task(name="sync.reap_stale_runs", ignore_result=True)
def reap_stale_runs() -> dict:
    """Periodic (celery beat): requeue runs lost to a dead worker or a broker outage."""
    return services.sync_runs_reap()


@shared_task(name="sync.resync_stale")
def resync_stale(limit: int | None = None) -> dict:
    """Periodic (celery beat): queue syncs of the accounts not synced for CALY_RESYNC_MINUTES.

    `limit` caps how many one tick queues; by default it follows the number of active accounts
    (see `services.resync_batch_size`). The result lists the queued runs for the admin.
    """
    runs = services.sync_request_stale(limit=limit)
    return {"queued_runs": [run.pk for run in runs]}


@shared_task(name="sync.prune_event_changes", ignore_result=True)
def prune_event_changes() -> int:
    """Periodic (celery beat): the change feed forgets what is older than its retention."""
    return services.event_changes_prune()


@shared_task(name="sync.deliver_webhook", acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """POST one webhook delivery (from the webhooks queue); a failure schedules its retry."""
    return services.delivery_send(delivery_id=delivery_id)


@shared_task(name="sync.maintain_channels", ignore_result=True)
def maintain_channels() -> dict:
    """Periodic (celery beat): open, renew and stop Google push channels."""
    return services.channels_maintain()
