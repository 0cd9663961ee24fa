"""The worker hooks of the sync app: a sync message's start is stamped on its request, and a
sync run's start and end are logged when asked for."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace

import pytest
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


@pytest.mark.django_db
def test_a_line_per_sync_run_when_asked_for(caplog):
    """`make up` / `make demo` set CALY_RUN_LOG_LEVEL=INFO: the console shows every run."""
    from sync.models import SyncRun
    from sync.tasks import reap_stale_runs, run_sync
    from tests.factories import make_account, make_user

    now = timezone.now()
    run = SyncRun.objects.create(
        account=make_account(make_user(), name="Home"),
        trigger="dashboard",
        state="succeeded",
        started_at=now - dt.timedelta(seconds=1.5),
        finished_at=now,
        created=2,
    )

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "caly.runs"]

    caplog.set_level(logging.WARNING, logger="caly.runs")
    lifecycle.log_run_start(sender=run_sync, args=(run.pk,))
    assert lines() == []  # off by default

    caplog.set_level(logging.INFO, logger="caly.runs")
    lifecycle.log_run_start(sender=run_sync, args=(run.pk,))
    lifecycle.log_run_end(sender=run_sync, args=(run.pk,))
    lifecycle.log_run_end(sender=reap_stale_runs, args=())
    assert lines() == [
        f"sync #{run.pk} of 'Home' (dashboard) starting",
        f"sync #{run.pk} of 'Home' succeeded in 1.5 s: 2 events created",
    ]
