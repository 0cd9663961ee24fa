"""The reaper joins beat's schedule in the database (0003), the one place that schedule lives.

`sync.reap_stale_runs` was an entry of CELERY_BEAT_SCHEDULE, which DatabaseScheduler copied
into this same row at every beat start, over any edit made in the admin; its "expires" option
never reached the row. A row beat made that way is kept, and given the expiry it was meant to
have: a tick that could not start within its interval is dropped, the next does its work.
"""

from django.db import migrations
from django.utils import timezone

REAPER_NAME = "sync.reap_stale_runs"
EVERY_SECONDS = 60


def install(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")

    every_minute = IntervalSchedule.objects.filter(every=EVERY_SECONDS, period="seconds").first()
    if every_minute is None:
        every_minute = IntervalSchedule.objects.create(every=EVERY_SECONDS, period="seconds")
    reaper, created = PeriodicTask.objects.get_or_create(
        name=REAPER_NAME,
        defaults={
            "task": "sync.reap_stale_runs",
            "interval": every_minute,
            "expire_seconds": EVERY_SECONDS,
            "description": (
                "Finds runs lost to a dead worker or a broker outage and puts them back on the "
                "queue. Safe to run at any time and any number of times."
            ),
        },
    )
    interval = reaper.interval
    if not created and reaper.expire_seconds is None and interval and interval.period == "seconds":
        reaper.expire_seconds = interval.every
        reaper.save(update_fields=["expire_seconds"])
    # Tell a running beat (DatabaseScheduler) that its schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def uninstall(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name=REAPER_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0006_synclease_run"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
