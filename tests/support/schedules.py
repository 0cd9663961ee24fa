"""Beat's schedule rows as the sync data migration writes them, for transactional tests: the
flush after each transactional test removes what migrations wrote."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps


@pytest.fixture
def beat_schedule(transactional_db):
    importlib.import_module("sync.migrations.0003_periodic_resync").install(apps, None)
