"""Fixtures for the sync queue tests: a private queue with its own workers (`lab`)."""

from __future__ import annotations

import uuid

import pytest

from tests.support.queue_lab import QueueLab


@pytest.fixture
def lab(settings, tmp_path):
    """Queues no other worker of this test run consumes; workers started with `lab.start_worker`
    see the same settings as the test (tests/settings.py, with its fake provider; what the test
    sets with `lab.configure`, such as the lease length or the retry policy)."""
    prefix = f"{settings.CALY_QUEUE_PREFIX}.{uuid.uuid4().hex[:6]}"
    settings.CALY_QUEUE_PREFIX = prefix
    settings.CALY_SYNC_QUEUE = f"{prefix}.sync"
    settings.CALY_MAINTENANCE_QUEUE = f"{prefix}.maintenance"
    settings.CALY_WEBHOOK_QUEUE = f"{prefix}.webhooks"
    lab = QueueLab(prefix=prefix, log_path=tmp_path / "provider.log", settings=settings)
    yield lab
    lab.stop()
