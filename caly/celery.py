"""The Celery app of Caly: its configuration is the CELERY_* Django settings.

The worker's start/stop hooks belong to the sync app and are connected when Django starts it
(`sync.apps.SyncConfig.ready` → `sync.lifecycle`).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "caly.settings")

app = Celery("caly")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
