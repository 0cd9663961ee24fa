from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Sync"

    def ready(self) -> None:
        # Connects the Celery worker hooks: the HTTP pool, start times, shutdown, logging.
        from sync import lifecycle  # noqa: F401
