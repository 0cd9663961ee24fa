"""The bare Celery baseline for bench_queue: a task that does nothing (workers load it with -I)."""

from celery import shared_task


@shared_task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(i: int) -> None:
    return None


@shared_task(name="bench.history_only", acks_late=True, track_started=False)
def history_only(i: int) -> dict:
    """Nothing but what every sync task also does: its result kept in the task history."""
    return {"run": i, "state": "succeeded"}
