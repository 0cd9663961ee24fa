"""The Celery app of Caly: its configuration is the CELERY_* Django settings.

The worker's start/stop hooks belong to the sync app and are connected when Django starts it
(`sync.apps.SyncConfig.ready` → `sync.lifecycle`).
"""

import os

from celery import Celery
from celery.worker import consumer

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "caly.settings")


class Consumer(consumer.Consumer):
    """Celery's worker consumer without its native delayed delivery (Celery's ETA tasks on quorum
    queues), which Caly never uses: a retry waits in a delay queue of its own (sync.broker).

    With quorum queues that step declares 28 `celery_delayed_*` queues through every URL of the
    failover list each time the consumer connects; after a node of the cluster was lost it
    retried the lost node for about ten seconds before the worker took messages again.
    """

    class Blueprint(consumer.Consumer.Blueprint):
        default_steps = [
            step
            for step in consumer.Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]


app = Celery("caly")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The default, below the settings: CELERY_WORKER_CONSUMER would still replace it.
app.add_defaults({"worker_consumer": "caly.celery:Consumer"})
app.autodiscover_tasks()
