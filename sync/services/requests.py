"""Requesting syncs: record a run, publish its id after commit, coalesce duplicates, and queue
the periodic resync of stale accounts."""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass

import amqp.exceptions
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.exceptions import KombuError, OperationalError

from calendars.models import Account, Calendar
from sync import broker, selectors, states
from sync.models import SyncRun

logger = logging.getLogger(__name__)

# What RabbitMQ (or the way to it) raises when it cannot take a message.
# What publishing raises when RabbitMQ cannot take a message: kombu's errors, socket errors, and
# the connection-level closes of a node going down (320 CONNECTION_FORCED, 541 INTERNAL_ERROR).
BROKER_ERRORS = (OperationalError, KombuError, OSError, amqp.exceptions.ConnectionError)


class BrokerUnavailable(Exception):
    """The sync request could not be handed to RabbitMQ; nothing was recorded."""


class AccountNotSyncable(Exception):
    def __init__(self, account: Account):
        super().__init__(
            f"Account {account.pk} is {account.get_status_display().lower()}; "
            "reconnect it before syncing."
        )


def sync_request(
    *, user, trigger: str, account: Account | None = None, publish: bool = True
) -> list[SyncRun]:
    """Queue a sync of one account, or of all the user's active accounts.

    A run already queued for an account is returned instead of a new one (coalescing); while a
    run is running, exactly one follow-up is queued. With `publish=False` nothing is sent to
    RabbitMQ: the caller runs the returned runs itself (`sync_run_execute`).

    All or nothing: if RabbitMQ does not take one of the runs (BrokerUnavailable), the runs
    this request added for the other accounts are withdrawn too (their messages find no run and
    are dropped), except one a worker has already started.
    """
    if account is not None:
        if account.status != Account.Status.ACTIVE:
            raise AccountNotSyncable(account)
        accounts = [account]
    else:
        # Credentials stay encrypted here: the sync reads them (one unreadable account fails its
        # own run, not this request).
        active = Account.objects.filter(owner=user, status=Account.Status.ACTIVE)
        accounts = list(active.defer("credentials"))
    runs, added = [], []
    for each in accounts:
        try:
            run, created = _request_account(account=each, trigger=trigger, publish=publish)
        except BrokerUnavailable as exc:
            if not added:
                raise
            withdrawn = _withdraw(added)
            if withdrawn == len(added):
                raise
            raise BrokerUnavailable(
                f"The sync queue (RabbitMQ) is unavailable; {len(added) - withdrawn} sync(s) of "
                "other accounts had already started and go on, nothing else was queued. "
                "Try again shortly."
            ) from exc
        runs.append(run)
        if created:
            added.append(run)
    return runs


def sync_request_account(
    *,
    account: Account,
    trigger: str,
    publish: bool = True,
    writes_only: bool = False,
    calendar: Calendar | None = None,
) -> SyncRun:
    """Queue a sync of one account (or return the one queued, widened to cover this request).

    What a run covers, narrowest first: `writes_only` (it carries the account's pending writes
    to the server, `sync.services.writes`; every run does that first), one `calendar` (a push
    said it changed: no calendar list), or every selected calendar. A queued run asked for more
    than it covers is widened (two different calendars: the whole account).
    """
    scope = Scope(writes_only=writes_only, calendar_id=calendar.pk if calendar else None)
    return _request_account(account=account, trigger=trigger, publish=publish, scope=scope)[0]


@dataclass(frozen=True)
class Scope:
    """What a run syncs (see `sync_request_account`); the default is the whole account."""

    writes_only: bool = False
    calendar_id: int | None = None

    @classmethod
    def of(cls, run: SyncRun) -> Scope:
        return cls(writes_only=run.writes_only, calendar_id=run.calendar_id)

    def covers(self, other: Scope) -> bool:
        if self.writes_only:
            return other.writes_only
        return (
            self.calendar_id is None or other.writes_only or other.calendar_id == self.calendar_id
        )

    def widened(self, other: Scope) -> Scope:
        if self.covers(other):
            return self
        if other.covers(self):
            return other
        return Scope()  # two calendars: the whole account


WHOLE = Scope()


def _request_account(
    *, account: Account, trigger: str, publish: bool, scope: Scope = WHOLE
) -> tuple[SyncRun, bool]:
    """The account's queued run, and whether this call added it."""
    queued = SyncRun.objects.filter(account=account, state=SyncRun.State.QUEUED)
    with transaction.atomic():
        existing = queued.first()
        if existing is not None and not Scope.of(existing).covers(scope):
            wider = Scope.of(existing).widened(scope)
            fields = {"writes_only": wider.writes_only, "calendar_id": wider.calendar_id}
            if not queued.filter(pk=existing.pk).update(**fields):
                existing = None  # it started meanwhile: queue another after it
            else:
                existing.writes_only, existing.calendar_id = wider.writes_only, wider.calendar_id
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                run = SyncRun.objects.create(
                    account=account,
                    trigger=trigger,
                    task_id=str(uuid.uuid4()),
                    writes_only=scope.writes_only,
                    calendar_id=scope.calendar_id,
                )
        except IntegrityError:  # a concurrent request queued one first
            existing = queued.first()
            if existing is not None and Scope.of(existing).covers(scope):
                return existing, False
            # ...it has started already, or covers less: go round again.
            return _request_account(account=account, trigger=trigger, publish=publish, scope=scope)
        if publish:
            transaction.on_commit(lambda: sync_publish(run=run, withdraw_on_failure=True))
    return run, True


def sync_publish(*, run: SyncRun, withdraw_on_failure: bool = False) -> None:
    """Hand the run's id (and nothing else) to RabbitMQ, waiting for the broker's confirm.

    A run waiting out a retry goes through a delay queue and comes back at its `retry_at`.
    With `withdraw_on_failure` (a new request) a run RabbitMQ did not take is deleted, so the
    caller can answer "nothing was queued"; otherwise it stays queued and unpublished, and the
    reaper sends it once the broker is back.
    """
    delay = 0
    if run.retry_at is not None:
        delay = max(0, math.ceil((run.retry_at - timezone.now()).total_seconds()))
    try:
        broker.publish_run(run_id=run.pk, task_id=run.task_id or str(uuid.uuid4()), delay=delay)
    except BROKER_ERRORS as exc:
        logger.error("could not publish sync run %s: %s", run.pk, type(exc).__name__)
        if withdraw_on_failure:
            _withdraw([run])
        raise BrokerUnavailable(
            "The sync queue (RabbitMQ) is unavailable; nothing was queued. Try again shortly."
        ) from exc
    states.run_mark_published(run_id=run.pk)


def sync_publish_or_leave_to_reaper(*, run: SyncRun) -> None:
    try:
        sync_publish(run=run)
    except BrokerUnavailable:
        logger.warning("sync run %s stays queued until the reaper can publish it", run.pk)


def _withdraw(runs: list[SyncRun]) -> int:
    """Delete these runs unless a worker has started them; returns how many were deleted.

    A message already published for one finds no run and is dropped."""
    withdrawn, _ = SyncRun.objects.filter(
        pk__in=[r.pk for r in runs], state=SyncRun.State.QUEUED, started_at=None
    ).delete()
    return withdrawn


# --- periodic resync (celery beat) -------------------------------------------------------
RESYNC_MIN_BATCH = 10


def resync_batch_size(*, active_accounts: int) -> int:
    """How many accounts one resync tick (a minute by default) may queue.

    N accounts due every CALY_RESYNC_MINUTES come due at N / CALY_RESYNC_MINUTES a minute. A tick
    queues at most twice that (and at least RESYNC_MIN_BATCH), so a backlog, such as every
    account after an outage, drains in about half an interval instead of landing in the FIFO
    sync queue all at once in front of the syncs people ask for.
    """
    steady = math.ceil(active_accounts / max(settings.CALY_RESYNC_MINUTES, 1))
    return max(RESYNC_MIN_BATCH, 2 * steady)


def sync_request_stale(
    *, limit: int | None = None, now: dt.datetime | None = None
) -> list[SyncRun]:
    """Queue syncs of active accounts last synced over CALY_RESYNC_MINUTES ago, stalest first.

    Accounts with a queued or running sync are left alone; one whose syncs keep failing is tried
    once per interval, not on every tick. Called by the `sync.resync_stale` periodic task.
    """
    now = now or timezone.now()
    if limit is None:
        active = Account.objects.filter(status=Account.Status.ACTIVE).count()
        limit = resync_batch_size(active_accounts=active)
    due = selectors.accounts_due_for_resync(
        older_than=now - dt.timedelta(minutes=settings.CALY_RESYNC_MINUTES),
        pushed_older_than=now - dt.timedelta(minutes=settings.CALY_PUSH_RESYNC_MINUTES),
    )[:limit]
    return [
        sync_request_account(account=account, trigger=SyncRun.Trigger.SCHEDULE) for account in due
    ]
