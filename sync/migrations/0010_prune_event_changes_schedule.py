"""Beat prunes the change feed's history hourly (the schedule lives in the database, 0003)."""

from django.db import migrations
from django.utils import timezone

NAME = "sync.prune_event_changes"
EVERY_SECONDS = 3600


def install(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    hourly = IntervalSchedule.objects.filter(every=EVERY_SECONDS, period="seconds").first()
    if hourly is None:
        hourly = IntervalSchedule.objects.create(every=EVERY_SECONDS, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=NAME,
        defaults={
            "task": NAME,
            "interval": hourly,
            "expire_seconds": EVERY_SECONDS,
            "description": (
                "Forgets event changes (the change feed's history, deletions included) older "
                "than CALY_CHANGES_RETENTION_DAYS."
            ),
        },
    )
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def uninstall(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0009_pending_writes"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
