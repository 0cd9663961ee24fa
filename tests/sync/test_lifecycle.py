"""The worker hooks of the sync app: a sync message's start is stamped on its request."""

from __future__ import annotations

from types import SimpleNamespace

from celery import signals
from celery.app.task import Context
from django.utils import timezone

from sync import lifecycle


def test_the_time_a_message_was_taken_travels_with_its_request():
    # What the worker's consumer holds as the message arrives: its fields become the task's
    # `self.request` when a pool thread runs it.
    message = SimpleNamespace(name="sync.run_sync", id="task-1", request_dict={"id": "task-1"})
    before = timezone.now()
    signals.task_received.send(sender=None, request=message)
    after = timezone.now()

    request = Context(message.request_dict)
    assert before <= lifecycle.received_at(request) <= after


def test_other_messages_are_not_stamped():
    message = SimpleNamespace(name="sync.reap_stale_runs", id="task-2", request_dict={})
    signals.task_received.send(sender=None, request=message)
    assert message.request_dict == {}
    assert lifecycle.received_at(Context(id="task-2")) is None
