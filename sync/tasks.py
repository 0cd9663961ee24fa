"""Celery tasks: thin, named for good, arguments are ids only."""

from celery import shared_task

from sync import services


@shared_task(name="sync.run_sync", acks_late=True)
def run_sync(run_id: int) -> dict:
    """Run one sync request. The message carries the SyncRun id and nothing else."""
    return services.sync_run_execute(run_id=run_id, task_id=run_sync.request.id or "")
