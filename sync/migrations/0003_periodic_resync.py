"""Beat's schedule for Caly, as rows of django-celery-beat so operators see and edit it in the admin.

- "Resync stale accounts": `sync.resync_stale` every minute.
- "celery.backend_cleanup": deletes task results older than CELERY_RESULT_EXPIRES, daily at
  04:00 UTC. Celery beat installs this entry by itself when results expire; creating it here
  under the same name makes it visible before beat first starts, and beat then keeps it as is.
"""

from django.db import migrations
from django.utils import timezone

RESYNC_NAME = "Resync stale accounts"
CLEANUP_NAME = "celery.backend_cleanup"


def install(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")

    every_minute = IntervalSchedule.objects.filter(every=1, period="minutes").first()
    if every_minute is None:
        every_minute = IntervalSchedule.objects.create(every=1, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=RESYNC_NAME,
        defaults={
            "task": "sync.resync_stale",
            "interval": every_minute,
            # A tick that could not start within its minute is dropped; the next does its work.
            "expire_seconds": 60,
            "description": (
                "Queues a sync of every active account whose last sync ended more than "
                "CALY_RESYNC_MINUTES ago, stalest first, skipping accounts with a sync queued or "
                "running. One tick queues at most twice the steady rate (active accounts / "
                'CALY_RESYNC_MINUTES per minute, at least 10); set {"limit": N} in the keyword '
                "arguments to override, e.g. when the interval is longer than a minute. "
                "Run exactly one beat process."
            ),
        },
    )

    daily_at_four = CrontabSchedule.objects.filter(
        minute="0", hour="4", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    ).first()
    if daily_at_four is None:
        daily_at_four = CrontabSchedule.objects.create(
            minute="0",
            hour="4",
            day_of_week="*",
            day_of_month="*",
            month_of_year="*",
            timezone="UTC",
        )
    PeriodicTask.objects.get_or_create(
        name=CLEANUP_NAME,
        defaults={
            "task": "celery.backend_cleanup",
            "crontab": daily_at_four,
            "expire_seconds": 12 * 3600,
            "description": (
                "Celery's own: deletes task results (the task history in the admin) older than "
                "CELERY_RESULT_EXPIRES (CALY_RESULT_EXPIRES_SECONDS, 7 days by default)."
            ),
        },
    )
    # Tell a running beat (DatabaseScheduler) that its schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def uninstall(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[RESYNC_NAME, CLEANUP_NAME]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0002_syncrun_published_at_retry_at"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
