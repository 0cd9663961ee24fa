"""Where sync messages go: the one sync queue, and broker-side delays for retries.

A run waiting to be retried is a message in a delay queue on RabbitMQ, not a sleeping thread or
an ETA message in a worker's memory: `<sync queue>.delay.<seconds>` holds it for that many
seconds (x-message-ttl) and then dead-letters it back onto the sync queue, at the back. Every
message in one delay queue has the same lifetime, so they expire in order; a delay queue nobody
has published to for a while deletes itself (x-expires).
"""

from __future__ import annotations

import math

import amqp.exceptions
from django.conf import settings
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from caly.celery import app
from caly.queues import durable_queue
from sync.backoff import backoff

# The task a run's message calls, by its registered name (sync/tasks.py): publishing needs
# only the name, so this module does not import the tasks, which import the services.
RUN_SYNC = "sync.run_sync"
DELIVER_WEBHOOK = "sync.deliver_webhook"

# A delay queue outlives its last message by this long, then RabbitMQ deletes it.
DELAY_QUEUE_IDLE_SECONDS = 60


def sync_queue() -> Queue:
    """The durable queue every sync worker consumes (declared the same way as in settings)."""
    return durable_queue(settings.CALY_SYNC_QUEUE, queue_type=settings.CALY_QUEUE_TYPE)


def webhook_queue() -> Queue:
    """The durable queue of webhook deliveries, consumed by workers of its own (Procfile)."""
    return durable_queue(settings.CALY_WEBHOOK_QUEUE, queue_type=settings.CALY_QUEUE_TYPE)


def delay_queue(seconds: int, target: Queue | None = None) -> Queue:
    """A queue that hands each message back to `target` (the sync queue) after `seconds`."""
    seconds = max(int(seconds), 1)
    target = target or sync_queue()
    return Queue(
        f"{target.name}.delay.{seconds}",
        Exchange("", type="direct"),
        routing_key=f"{target.name}.delay.{seconds}",
        durable=True,
        queue_arguments={
            "x-queue-type": "classic",
            "x-message-ttl": seconds * 1000,
            "x-dead-letter-exchange": target.exchange.name,
            "x-dead-letter-routing-key": target.routing_key,
            # Redeclared on every publish, so this counts from the latest one.
            "x-expires": (seconds + DELAY_QUEUE_IDLE_SECONDS) * 1000,
        },
    )


def backoff_seconds(*, attempt: int, retry_after: float | None = None) -> int:
    """How long to wait after the `attempt`-th try (from 1) failed (`sync.backoff.backoff`).

    A server's Retry-After is a floor. Whole seconds, so retries share a few delay queues.
    """
    delay = backoff(
        attempt=attempt - 1,
        base=settings.CALY_RETRY_BASE_SECONDS,
        cap=settings.CALY_RETRY_MAX_SECONDS,
        retry_after=retry_after,
    )
    return max(1, math.ceil(delay))


def publish_run(*, run_id: int, task_id: str, delay: int = 0) -> None:
    """Publish a run's id to the sync queue (or to a delay queue in front of it), confirmed.

    Raises kombu/socket errors if RabbitMQ could not take it after the publish retries
    (publisher confirms and the retry policy are the app's settings, CELERY_TASK_PUBLISH_*),
    and kombu's OperationalError if the queue's node is down.
    """
    _publish(RUN_SYNC, run_id, task_id=task_id, target=sync_queue(), delay=delay)


def publish_delivery(*, delivery_id: str, delay: int = 0) -> None:
    """Publish a webhook delivery's id to the webhooks queue (or a delay queue in front of it)."""
    _publish(DELIVER_WEBHOOK, delivery_id, task_id=None, target=webhook_queue(), delay=delay)


def _publish(task: str, argument, *, task_id: str | None, target: Queue, delay: int) -> None:
    queue = delay_queue(delay, target) if delay > 0 else target
    try:
        app.send_task(
            task,
            args=[argument],
            task_id=task_id,
            queue=queue,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
        )
    except amqp.exceptions.NotFound as exc:
        # In a cluster, a (classic) delay queue whose node is down is a 404 to every other
        # node: the run is left to the reaper like any broker outage. (Other refusals, such as
        # a queue declared with other arguments, are configuration errors and stay loud.)
        raise OperationalError(f"RabbitMQ refused {queue.name}: {exc}") from exc
