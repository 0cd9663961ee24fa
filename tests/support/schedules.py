"""Beat's schedule rows as the sync data migrations write them (0003, 0007), for transactional
tests: the flush after each transactional test removes what migrations wrote. tests/conftest.py
puts them back for every transactional test."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

MIGRATIONS = (
    "sync.migrations.0003_periodic_resync",
    "sync.migrations.0007_reaper_schedule",
    "sync.migrations.0010_prune_event_changes_schedule",
    "sync.migrations.0013_maintain_channels_schedule",
)


@pytest.fixture
def beat_schedule(transactional_db):
    for name in MIGRATIONS:
        importlib.import_module(name).install(apps, None)
