"""How Caly's durable queues are declared, in one place (settings, publishers and tests)."""

from kombu import Exchange, Queue


def durable_queue(name: str, *, queue_type: str) -> Queue:
    """A durable queue behind a direct exchange of the same name (classic or quorum)."""
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-queue-type": queue_type},
    )
