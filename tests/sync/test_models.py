"""Task history: what Celery's result backend stores for each task, as the admin shows it."""

from __future__ import annotations

import traceback

import pytest
from celery.app.task import Context
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_results.models import TaskResult

from caly.celery import app

pytestmark = pytest.mark.django_db

SECRET = "hunter2-never-shown"


@pytest.fixture
def request_context():
    return Context(
        id="t-1",
        task="sync.run_sync",
        args=[7],
        kwargs={},
        hostname="worker@host",
        delivery_info={"routing_key": "sync"},
        retries=0,
    )


def test_a_task_result_is_one_row_written_in_one_statement(request_context):
    backend = app.backend
    with CaptureQueriesContext(connection) as started:
        backend.store_result("t-1", None, "STARTED", request=request_context)
    first = TaskResult.objects.get(task_id="t-1")
    with CaptureQueriesContext(connection) as done:
        backend.mark_as_done("t-1", {"run": 7, "state": "succeeded"}, request=request_context)

    assert len(started.captured_queries) == len(done.captured_queries) == 1
    (row,) = TaskResult.objects.filter(task_id="t-1")
    assert (row.status, row.task_name, row.worker) == ("SUCCESS", "sync.run_sync", "worker@host")
    assert row.date_created == first.date_created and row.date_started == first.date_started
    assert row.date_done >= row.date_started
    meta = backend.get_task_meta("t-1")
    assert (meta["status"], meta["result"], meta["args"]) == (
        "SUCCESS",
        {"run": 7, "state": "succeeded"},
        [7],
    )


def test_a_failed_task_keeps_no_secret_in_its_exception_or_traceback(request_context):
    backend = app.backend
    try:
        raise ValueError(f"password={SECRET} at https://user:{SECRET}@calendar.example/")
    except ValueError as exc:
        backend.mark_as_failure(
            "t-1", exc, traceback=traceback.format_exc(), request=request_context
        )

    row = TaskResult.objects.get(task_id="t-1")
    assert row.status == "FAILURE"
    assert SECRET not in row.result and SECRET not in row.traceback
    assert "ValueError" in row.traceback
    meta = backend.get_task_meta("t-1")
    assert "calendar.example" in str(meta["result"])
