"""The bare Celery baseline for bench_queue: a task that does nothing (workers load it with -I)."""

from celery import shared_task


@shared_task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(i: int) -> None:
    return None
