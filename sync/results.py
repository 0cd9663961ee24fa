"""The Celery result backend: django-celery-results, storing through `sync.models.TaskHistory`."""

from django_celery_results.backends.database import DatabaseBackend

from sync.models import TaskHistory


class ResultBackend(DatabaseBackend):
    TaskModel = TaskHistory
