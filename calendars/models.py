"""The synced data: calendar accounts, their calendars and the events in them."""

from django.conf import settings
from django.db import models

from calendars.crypto import EncryptedJSONField


class Account(models.Model):
    class Provider(models.TextChoices):
        CALDAV = "caldav", "CalDAV"
        GOOGLE = "google", "Google Calendar"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        NEEDS_REAUTH = "needs_reauth", "Needs re-authentication"
        DISABLED = "disabled", "Disabled"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="calendar_accounts"
    )
    provider = models.CharField(max_length=16, choices=Provider.choices)
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2000, blank=True)
    username = models.CharField(max_length=255, blank=True)
    # Where discovery found the calendars (CalDAV calendar home), so syncs skip rediscovery.
    home_url = models.URLField(max_length=2000, blank=True, editable=False)
    # Password or OAuth tokens; encrypted at rest and never serialised anywhere.
    credentials = EncryptedJSONField(blank=True, default=dict, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["status", "last_synced_at"])]

    def __str__(self):
        return f"{self.name} ({self.get_provider_display()})"


class Calendar(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="calendars")
    # CalDAV: the collection URL; Google: the calendar id.
    remote_id = models.CharField(max_length=2000)
    name = models.CharField(max_length=500, blank=True)
    color = models.CharField(max_length=32, blank=True)
    timezone = models.CharField(max_length=100, blank=True)
    selected = models.BooleanField(default=True)
    # May Caly write events here (CalDAV privileges, Google accessRole)? Set by each sync.
    writable = models.BooleanField(default=True)
    # Provider sync state: CalDAV sync-token and ctag, Google nextSyncToken.
    sync_token = models.TextField(blank=True)
    ctag = models.TextField(blank=True)
    # When the CalDAV server last refused sync-collection for this calendar although it offered
    # it; the calendar syncs by ctag until a day later, then sync-collection is tried again.
    sync_refused_at = models.DateTimeField(null=True, blank=True)
    # How its objects are best fetched (`sync.remote.Fetching`), learnt from a server too slow to
    # answer for the whole calendar at once: list first, then batches of `fetch_batch` (0: the
    # default size). Kept so that the next sync does not learn it again.
    fetch_by_listing = models.BooleanField(default=False)
    fetch_batch = models.PositiveIntegerField(default=0)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    # When a sync first found the calendar missing from the server's list; the next sync that
    # does not find it either deletes it. Cleared when it is listed again.
    missing_since = models.DateTimeField(null=True, blank=True)
    # The secret in the URL of the calendar's private iCalendar feed (/feeds/<secret>.ics); made
    # when it is first asked for, replaced by rotating (calendars.services). Stored as it is:
    # see UserFeed.
    feed_secret = models.CharField(
        max_length=64, unique=True, null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account_id", "name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "remote_id"], name="calendar_unique_remote_id"
            )
        ]

    def __str__(self):
        return self.name or self.remote_id


class UserFeed(models.Model):
    """The secret in the URL of a user's merged feed: every selected calendar of theirs in one.

    Feed secrets are bearer URLs kept as they are, not as digests: the API shows a feed's URL on
    every read (`feed_url`), so Caly must be able to give it again, and what a secret unlocks
    (the stored events) lies in this same database, so a reader of the table gains nothing a
    digest would keep from them. They never appear in logs (caly.scrub removes /feeds/<secret>).
    """

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="calendar_feed"
    )
    secret = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"merged feed of user {self.owner_id}"


class Event(models.Model):
    """One VEVENT: a master (empty recurrence_id) or an overridden instance of a recurring event."""

    class SyncState(models.TextChoices):
        SYNCED = "synced", "Synced"
        PENDING = "pending", "Pending"  # a change made through Caly is on its way to the server
        CONFLICT = "conflict", "Conflict"  # the server's copy changed first; it was kept
        FAILED = "failed", "Failed"  # the server refused the change

    calendar = models.ForeignKey(Calendar, on_delete=models.CASCADE, related_name="events")
    uid = models.CharField(max_length=1000)
    # RECURRENCE-ID of an overridden instance as an ISO instant (UTC) or date; "" for a master.
    recurrence_id = models.CharField(max_length=64, blank=True, default="")
    # Where the event lives remotely: CalDAV object href, or Google event id.
    href = models.CharField(max_length=2000, blank=True)
    etag = models.CharField(max_length=500, blank=True)
    summary = models.TextField(blank=True)
    description = models.TextField(blank=True)
    location = models.TextField(blank=True)
    start = models.DateTimeField(null=True, blank=True)
    end = models.DateTimeField(null=True, blank=True)
    all_day = models.BooleanField(default=False)
    timezone = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=32, blank=True)
    rrule = models.TextField(blank=True)
    rdate = models.JSONField(default=list, blank=True)
    exdate = models.JSONField(default=list, blank=True)
    # The provider's source: the iCalendar object text, or Google's event JSON.
    raw = models.TextField(blank=True)
    remote_last_modified = models.DateTimeField(null=True, blank=True)
    # Where the last change made through Caly stands (sync.services.writes).
    sync_state = models.CharField(
        max_length=16, choices=SyncState.choices, default=SyncState.SYNCED
    )
    sync_error = models.TextField(blank=True)
    # Deleted through Caly, not yet on the server: left out of every listing meanwhile.
    deleting = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["start", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["calendar", "uid", "recurrence_id"], name="event_unique_uid_recurrence"
            )
        ]
        indexes = [
            models.Index(fields=["calendar", "href"]),
            models.Index(fields=["calendar", "start"]),
        ]

    def __str__(self):
        return self.summary or self.uid


class EventChange(models.Model):
    """One change of a stored event, for the change feed (`GET /api/changes/`).

    Written by the database itself (triggers on calendars_event, migration 0005), so no code
    path that stores events can forget it: every insert and update is an upsert, every
    deletion (and an event being deleted through Caly) a delete, kept as a tombstone for
    CALY_CHANGES_RETENTION_DAYS. `txid` is the writing transaction's id: the feed hands out
    only changes of transactions older than every one still running (`calendars.changes.
    changes_for_user`), so a change that commits after a reader took its cursor is never skipped.
    """

    class Kind(models.TextChoices):
        UPSERT = "upsert", "Upsert"
        DELETE = "delete", "Delete"

    id = models.BigAutoField(primary_key=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    account_id = models.BigIntegerField()
    calendar_id = models.BigIntegerField()
    event_id = models.BigIntegerField()
    uid = models.CharField(max_length=1000)
    recurrence_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    txid = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["owner", "txid", "id"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self):
        return f"{self.kind} of event {self.event_id}"
