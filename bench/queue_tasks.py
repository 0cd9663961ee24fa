"""The bare Celery baseline for bench_queue: a task that does nothing (workers load it with -I)."""

import time

from celery import shared_task


@shared_task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(i: int) -> None:
    return None


@shared_task(name="bench.history_only", acks_late=True, track_started=False)
def history_only(i: int) -> dict:
    """Nothing but what every sync task also does: its result kept in the task history."""
    return {"run": i, "state": "succeeded"}


# What a fleet sync spends waiting on its provider (bench_queue: 2 requests of 100 ms).
FLEET_WAIT_S = 0.2


@shared_task(name="bench.wait_history", acks_late=True, track_started=False)
def wait_history(i: int) -> dict:
    """A fleet sync without Caly: its provider's wait, and its result kept in the task history.
    A fleet of these is the most the fleet of syncs could reach on this machine."""
    time.sleep(FLEET_WAIT_S)
    return {"run": i, "state": "succeeded"}
