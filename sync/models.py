"""Sync runs (one request to sync one account) and the per-account lease that serialises them."""

from django.db import models
from django.utils import timezone

from calendars.models import Account


class SyncRun(models.Model):
    class Trigger(models.TextChoices):
        API = "api", "API"
        SCHEDULE = "schedule", "Schedule"
        COMMAND = "command", "Command"
        ADMIN = "admin", "Admin"

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
        }


class SyncLease(models.Model):
    """Who may sync an account right now; lapses by itself if its holder dies."""

    account = models.OneToOneField(
        Account, on_delete=models.CASCADE, primary_key=True, related_name="sync_lease"
    )
    holder = models.CharField(max_length=100, blank=True)
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
