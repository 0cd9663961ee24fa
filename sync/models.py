"""Sync runs (one request to sync one account) and the per-account lease that serialises them."""

import json
import uuid

from celery import states
from django.conf import settings
from django.db import connections, models, router
from django.utils import timezone
from django_celery_results.managers import TaskResultManager
from django_celery_results.models import TaskResult

from calendars.crypto import EncryptedJSONField
from calendars.models import Account, Calendar, Event
from caly.scrub import scrub
from sync import sql


class SyncRun(models.Model):
    class Trigger(models.TextChoices):
        API = "api", "API"
        SCHEDULE = "schedule", "Schedule"
        COMMAND = "command", "Command"
        ADMIN = "admin", "Admin"
        WRITE = "write", "Write"  # carries events changed through Caly to the server
        PUSH = "push", "Push"  # the server said a calendar changed (Google push)
        DASHBOARD = "dashboard", "Dashboard"  # "Sync now" / "Sync all" on the dashboard

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    TERMINAL_STATES = (State.SUCCEEDED, State.FAILED)

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="sync_runs")
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    requested_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    deleted = models.PositiveIntegerField(default=0)
    calendars_total = models.PositiveIntegerField(default=0)
    calendars_done = models.PositiveIntegerField(default=0)
    events_processed = models.PositiveIntegerField(default=0)
    # Through the listings of the calendars it fetches in full or in part: objects listed, and
    # those stored as listed so far (fetched by this run, or already stored before it).
    objects_total = models.PositiveIntegerField(default=0)
    objects_done = models.PositiveIntegerField(default=0)
    # Readable for a person; never carries credentials.
    error = models.TextField(blank=True)
    # Objects that could not be read (malformed iCalendar and the like); the rest still syncs.
    skipped = models.JSONField(default=list, blank=True)
    task_id = models.CharField(max_length=255, blank=True, db_index=True)
    # Its message arrived while another run of the account held the lease; that run hands the
    # message back when it releases the lease.
    deferred = models.BooleanField(default=False)
    # When RabbitMQ confirmed the run's latest message; empty while it still has to be sent
    # (the reaper sends runs left unsent by a broker outage).
    published_at = models.DateTimeField(null=True, blank=True)
    # A queued run waiting out a transient error: its message comes back at this time.
    retry_at = models.DateTimeField(null=True, blank=True)
    # Syncs this one calendar only, without listing the account's calendars (a push said it
    # changed); empty: every selected calendar.
    calendar = models.ForeignKey(
        Calendar, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Only carries the account's pending writes to the server, without reading its calendars
    # (a write's own run); a sync requested while it is queued turns it into a whole sync.
    writes_only = models.BooleanField(default=False)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            # Coalescing, race-proof: at most one queued run per account.
            models.UniqueConstraint(
                fields=["account"],
                condition=models.Q(state="queued"),
                name="syncrun_one_queued_per_account",
            )
        ]
        indexes = [models.Index(fields=["account", "state"])]

    def __str__(self):
        return f"Sync #{self.pk} of {self.account} ({self.state})"

    @property
    def progress(self) -> dict:
        return {
            "calendars_done": self.calendars_done,
            "calendars_total": self.calendars_total,
            "events_processed": self.events_processed,
            "objects_done": self.objects_done,
            "objects_total": self.objects_total,
        }


class PendingWrite(models.Model):
    """An event created, changed or deleted through Caly, on its way to the server.

    Recorded in the transaction that changed the event locally, and carried out by the
    account's next run, in the order the API accepted the writes (their ids).
    """

    class Kind(models.TextChoices):
        CREATE = "create", "Create"
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        APPLIED = "applied", "Applied"
        CONFLICT = "conflict", "Conflict"
        FAILED = "failed", "Failed"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="pending_writes")
    calendar = models.ForeignKey(Calendar, on_delete=models.CASCADE, related_name="+")
    # The local row the write is about (the master, for a change to one occurrence).
    event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.SET_NULL, related_name="pending_writes"
    )
    uid = models.CharField(max_length=1000)
    recurrence_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # What is sent: the remote href or event id, and the body (an iCalendar object, or JSON).
    href = models.CharField(max_length=2000)
    body = models.TextField(blank=True)
    # Also written into what is sent, so that a write redelivered after its worker died
    # recognises itself on the server instead of applying twice.
    marker = models.CharField(max_length=64, unique=True)
    # The fields the user changed, for saying what was not applied on a conflict.
    fields = models.JSONField(default=list, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    error = models.TextField(blank=True)
    accepted_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["account", "state", "id"]),
            models.Index(fields=["calendar", "state"]),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.uid} ({self.state})"


class WatchChannel(models.Model):
    """A Google `events.watch` channel on one calendar: Google POSTs to /hooks/google/ when the
    calendar changes (sync.services.push)."""

    calendar = models.OneToOneField(
        Calendar, on_delete=models.CASCADE, related_name="watch_channel"
    )
    channel_id = models.UUIDField(unique=True, default=uuid.uuid4)
    # SHA-256 of the secret token Google sends back with every notification.
    token_digest = models.CharField(max_length=64)
    resource_id = models.CharField(max_length=500, blank=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"channel {self.channel_id} on {self.calendar_id}"


class Webhook(models.Model):
    """An app's address for learning of changes (`POST /api/webhooks/`)."""

    class Type(models.TextChoices):
        EVENTS_CHANGED = "events.changed", "Events changed"
        SYNC_FAILED = "sync.failed", "Sync failed"
        ACCOUNT_NEEDS_REAUTH = "account.needs_reauth", "Account needs reconnecting"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)  # of Type values
    # {"secret": ...}: signs every delivery; shown once, encrypted at rest.
    secret = EncryptedJSONField(default=dict, editable=False)
    active = models.BooleanField(default=True)
    # Since when every delivery has failed; a day of that deactivates the webhook.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.url


class WebhookDelivery(models.Model):
    """One notification to one webhook, recorded in the transaction that made the change and
    sent (again, until a 2xx or a day has passed) from the webhooks queue."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    type = models.CharField(max_length=32, choices=Webhook.Type.choices)
    data = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["webhook", "created_at"])]

    def __str__(self):
        return f"{self.type} to {self.webhook_id} ({self.state})"


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, what the receiver answered (or why there was no answer)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self):
        return f"attempt at {self.at:%Y-%m-%d %H:%M:%S}: {self.status_code or self.error[:40]}"


class SyncLease(models.Model):
    """Who may sync an account right now; lapses by itself if its holder dies."""

    account = models.OneToOneField(
        Account, on_delete=models.CASCADE, primary_key=True, related_name="sync_lease"
    )
    holder = models.CharField(max_length=100, blank=True)
    # The run the holder is syncing (empty while the lease is free).
    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"lease on {self.account_id} held by {self.holder or 'nobody'}"


class RequestBudget(models.Model):
    """How far ahead one provider user's request budget is taken (see `sync.budget`)."""

    # e.g. "google:alice@example.com"
    key = models.CharField(max_length=300, primary_key=True)
    # Unix time at which the budget is next entirely free; ahead of now while it is in use.
    next_free_at = models.FloatField(default=0.0)

    def __str__(self):
        return f"request budget {self.key}"


class TaskHistoryManager(TaskResultManager):
    """Writes a task's result in one INSERT ... ON CONFLICT statement.

    django-celery-results reads the row, then inserts or updates it in a transaction: four
    round trips to the database for every sync run. The traceback and exception of a failed
    task are scrubbed of secrets first, as logs are.
    """

    def store_result(
        self,
        content_type,
        content_encoding,
        task_id,
        result,
        status,
        traceback=None,
        meta=None,
        periodic_task_name=None,
        task_name=None,
        task_args=None,
        task_kwargs=None,
        worker=None,
        using=None,
        **kwargs,
    ):
        if status in states.EXCEPTION_STATES and isinstance(result, str):
            result = _scrub_json(result)
        values = {
            "status": status,
            "result": result,
            "traceback": scrub(traceback) if traceback else traceback,
            "meta": meta,
            "content_encoding": content_encoding,
            "content_type": content_type,
            "periodic_task_name": periodic_task_name,
            "task_name": task_name,
            "task_args": task_args,
            "task_kwargs": task_kwargs,
            "worker": worker,
        }
        now = timezone.now()
        started = now if "date_started" in kwargs else None  # a STARTED state
        connection = connections[using or router.db_for_write(self.model)]
        if connection.vendor != "postgresql":  # the same upsert, by the ORM
            if started:
                values["date_started"] = started
            self.using(connection.alias).bulk_create(
                [self.model(task_id=task_id, **values)],
                update_conflicts=True,
                unique_fields=["task_id"],
                update_fields=[*values, "date_done"],
            )
            return
        # Every task writes this row: the statement is written out, since building it through
        # bulk_create costs more CPU than PostgreSQL takes to run it (bench/RESULTS.md, queue).
        with connection.cursor() as cursor:
            cursor.execute(sql.TASK_HISTORY_UPSERT, [task_id, *values.values(), now, now, started])


def _scrub_json(text: str) -> str:
    scrubbed = scrub(text)
    try:
        json.loads(scrubbed)
    except ValueError:  # the secret's pattern took JSON syntax along: keep the text readable
        return json.dumps({"exc_type": "Error", "exc_message": [scrubbed]})
    return scrubbed


class TaskHistory(TaskResult):
    """django-celery-results' task results, stored by `TaskHistoryManager` (see sync.results)."""

    objects = TaskHistoryManager()

    class Meta:
        proxy = True
        verbose_name = "task history"
