"""Beat opens, renews and stops Google push channels every minute (sync.services.push)."""

from django.db import migrations
from django.utils import timezone

NAME = "sync.maintain_channels"
EVERY_SECONDS = 60


def install(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    every = IntervalSchedule.objects.filter(every=EVERY_SECONDS, period="seconds").first()
    if every is None:
        every = IntervalSchedule.objects.create(every=EVERY_SECONDS, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=NAME,
        defaults={
            "task": NAME,
            "interval": every,
            "expire_seconds": EVERY_SECONDS,
            "description": (
                "Opens a Google push channel for every selected Google calendar when "
                "CALY_PUBLIC_URL is set, renews channels before they expire, stops those no "
                "longer wanted. Does nothing when there is nothing to do."
            ),
        },
    )
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def uninstall(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0012_push_channels"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
