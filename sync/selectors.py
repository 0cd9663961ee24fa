"""Reads of sync runs (scoped to one user), of when accounts were and will next be synced, and of
the etags a sync compares with."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce, Greatest, Now
from django.utils import timezone

from calendars.models import Account, Calendar, Event
from sync.models import SyncRun


def runs_for_user(
    *, user, account_id: int | None = None, state: str | None = None
) -> QuerySet[SyncRun]:
    qs = SyncRun.objects.filter(account__owner=user)
    if account_id is not None:
        qs = qs.filter(account_id=account_id)
    if state is not None:
        qs = qs.filter(state=state)
    return qs


# --- periodic resync and the dashboard ----------------------------------------------------
_NEVER = Value(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), output_field=DateTimeField())
BUSY_STATES = (SyncRun.State.QUEUED, SyncRun.State.RUNNING)


def _last_attempt(qs: QuerySet[Account]) -> QuerySet[Account]:
    """Annotate `last_attempt`: when the account's last sync ended, successful or not."""
    last_finished = (
        SyncRun.objects.filter(account=OuterRef("pk"), finished_at__isnull=False)
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    return qs.annotate(
        last_attempt=Greatest(
            Coalesce("last_synced_at", _NEVER),
            Coalesce(Subquery(last_finished, output_field=DateTimeField()), _NEVER),
        ),
        busy=Exists(SyncRun.objects.filter(account=OuterRef("pk"), state__in=BUSY_STATES)),
    )


def accounts_due_for_resync(
    *, older_than: dt.datetime, pushed_older_than: dt.datetime | None = None
) -> QuerySet[Account]:
    """Active accounts with no queued or running sync whose last sync ended before `older_than`,
    stalest (and never synced) first. Accounts every selected calendar of which has a live push
    channel are due only once their last sync ended before `pushed_older_than`."""
    due = _last_attempt(
        Account.objects.filter(status=Account.Status.ACTIVE).defer("credentials")
    ).filter(last_attempt__lt=older_than, busy=False)
    if pushed_older_than is not None:
        unwatched = Calendar.objects.filter(account=OuterRef("pk"), selected=True).filter(
            Q(watch_channel__isnull=True) | Q(watch_channel__expires_at__lte=Now())
        )
        pushing = Exists(Calendar.objects.filter(account=OuterRef("pk"), selected=True)) & ~Exists(
            unwatched
        )
        due = due.exclude(pushing, last_attempt__gte=pushed_older_than)
    return due.order_by("last_attempt", "id")


def accounts_overview(*, user, account_id: int | None = None) -> list[Account]:
    """The user's accounts (or the one of them with `account_id`) for the dashboard, each with
    `event_count`, `last_sync_ended_at` and `next_sync_at` (None: not scheduled)."""
    mine = Account.objects.filter(owner=user)
    if account_id is not None:
        mine = mine.filter(pk=account_id)
    accounts = list(
        _last_attempt(mine.defer("credentials"))
        .annotate(event_count=Count("calendars__events"))
        .order_by("name", "id")
    )
    for account in accounts:
        account.next_sync_at = account_next_sync(account=account)
        account.last_sync_ended_at = (
            account.last_attempt if account.last_attempt > _NEVER.value else None
        )
    return accounts


def resync_enabled() -> bool:
    """Whether beat's periodic resync task exists and is switched on (it can be, in the admin)."""
    from django_celery_beat.models import PeriodicTask

    return PeriodicTask.objects.filter(task="sync.resync_stale", enabled=True).exists()


def account_next_sync(*, account: Account, now: dt.datetime | None = None) -> dt.datetime | None:
    """When the periodic resync will next queue this account (an annotated `_last_attempt` row).

    None when it will not: the account is not active. A time in the past means "at the next
    tick", and a busy account is being synced already.
    """
    if account.status != Account.Status.ACTIVE:
        return None
    now = now or timezone.now()
    if account.busy:
        return now
    if account.last_attempt <= _NEVER.value:
        return now
    return account.last_attempt + dt.timedelta(minutes=settings.CALY_RESYNC_MINUTES)


def stored_etags(*, calendar_id: int) -> dict[str, str]:
    """The stored etag of each href of a calendar: what a sync compares a listing with."""
    etags = Event.objects.filter(calendar_id=calendar_id).values_list("href", "etag")
    return dict(etags.order_by().distinct())
