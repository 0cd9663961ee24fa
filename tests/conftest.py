"""Shared fixtures: API clients, real CalDAV servers, real Celery workers on private queues."""

from __future__ import annotations

import warnings

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tests.factories import make_user
from tests.support.caldav_servers import start_radicale, start_xandikos
from tests.support.database import wait_for_other_connections_idle
from tests.support.fake_google import FakeGoogle
from tests.support.schedules import beat_schedule  # noqa: F401 (fixture)
from tests.support.workers import start_worker


def pytest_configure(config):
    if settings.SETTINGS_MODULE != "tests.settings":
        raise pytest.UsageError(
            f"Tests run with DJANGO_SETTINGS_MODULE=tests.settings, not {settings.SETTINGS_MODULE}."
        )
    if settings.CALY_QUEUE_PREFIX == "caly":
        raise pytest.UsageError(
            "Tests need their own queues: run them with `make test` (it sets CALY_QUEUE_PREFIX)."
        )


@pytest.fixture(scope="session", autouse=True)
def _private_queues():
    """Delete this run's queues from the shared broker when the run ends."""
    yield
    from caly.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in settings.CELERY_TASK_QUEUES:
            channel.queue_delete(queue.name)
            channel.exchange_delete(queue.exchange.name)


@pytest.fixture(autouse=True)
def _transactional_test(request):
    """A transactional test starts on tables the one before it flushed, without the rows the data
    migrations wrote: beat's schedule is put back, as every real database has it. When it ends,
    the tables are flushed only once the workers are done with them: a worker still inside a
    transaction (ending a run the test no longer waits for) would deadlock with the TRUNCATE."""
    marker = request.node.get_closest_marker("django_db")
    marked = marker is not None and marker.kwargs.get(
        "transaction", bool(marker.args and marker.args[0])
    )
    if not (marked or {"transactional_db", "live_server"} & set(request.fixturenames)):
        yield
        return
    request.getfixturevalue("beat_schedule")
    yield
    if not wait_for_other_connections_idle():
        busy = f"{request.node.nodeid}: workers still busy when its tables were flushed"
        warnings.warn(busy, stacklevel=1)


@pytest.fixture
def user(db):
    return make_user("alice")


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture(scope="session")
def radicale():
    server = start_radicale()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def xandikos():
    server = start_xandikos()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def google():
    """A fake Google Calendar API and OAuth server on loopback; each test adds its own users."""
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def worker(django_db_setup, django_db_blocker):
    """One real worker process (thread pool) for the session, on this run's queues."""
    with django_db_blocker.unblock():
        proc = start_worker(threads=4)
    yield proc
    proc.stop()
