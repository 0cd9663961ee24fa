"""A sync run's state transitions, all in one place: queued → running → succeeded or failed, or
back to queued (retry, interrupted, handed back).

Every change of a run's state is written here, each in a short transaction that locks the
account's lease first, then the run (the lock order of `sync.leases`).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Subquery
from django.utils import timezone

from calendars.crypto import UnreadableCredentials
from calendars.models import Account, Calendar
from sync import sql
from sync.leases import (
    lease_alive,
    lease_lock,
    lease_release,
    lease_take,
    lease_token,
    lease_ttl,
    locked_leases,
)
from sync.models import SyncRun

logger = logging.getLogger(__name__)


class ClaimOutcome(enum.Enum):
    """What a worker should do with the message of a run it just received."""

    ACQUIRED = "acquired"  # sync it now
    DEFERRED = "deferred"  # the account's current sync hands it back when done
    DONE = "done"  # nothing left to do: finished, gone, or given up
    LATER = "later"  # publish it again in `delay` seconds (early retry, or its worker may live)


@dataclass
class Claim:
    outcome: ClaimOutcome
    run: SyncRun | None = None
    token: str = ""
    delay: int = 0


@dataclass
class Counts:
    """What a run did so far: event counts, calendar progress, the calendars it finished."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    calendars_total: int = 0
    calendars_done: int = 0
    # Events applied but not yet added to the run's progress: the last batch's are written
    # with the run's ending instead of in a statement of their own.
    events_unrecorded: int = 0
    # Objects listed and stored as listed (SyncRun.objects_total/_done), when a listing said.
    objects_total: int = 0
    objects_done: int = 0
    # Calendars found unchanged (nothing written): their last_synced_at is set with the ending.
    calendars_unchanged: list[int] = field(default_factory=list)
    # What the sync learnt about its account (a calendar home that moved), saved with the ending.
    account: dict = field(default_factory=dict)

    def add(self, *, created: int, updated: int, deleted: int) -> None:
        self.created += created
        self.updated += updated
        self.deleted += deleted

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def event_counts(self) -> dict:
        return {"created": self.created, "updated": self.updated, "deleted": self.deleted}

    def calendar_counts(self) -> dict:
        return {"calendars_total": self.calendars_total, "calendars_done": self.calendars_done}


# What an ending may record on its account (`Ending.account`, `Counts.account`).
ACCOUNT_ENDING_FIELDS = ("status", "last_error", "last_synced_at", "home_url")


@dataclass(frozen=True)
class Ending:
    """How a run ends: its final state and error, and what to record on its account."""

    state: str
    error: str = ""
    account: dict = field(default_factory=dict)


# A retry whose message comes this much before its time is run at once.
RETRY_EARLY = dt.timedelta(seconds=0.5)


def _seconds_until(when: dt.datetime, now: dt.datetime) -> int:
    return max(1, math.ceil((when - now).total_seconds()))


def run_claim(
    *, run_id: int, task_id: str = "", worker: str = "", received_at: dt.datetime | None = None
) -> Claim:
    """Take the account's lease and mark the run running; or say why not.

    `received_at` is when the worker slot took the message: the run's start, as far as the
    start-order promise goes (the claim itself may wait for the database).
    """
    now = timezone.now()
    started_at = min(received_at or now, now)
    try:
        if sql.in_use():
            claim = _claim_by_sql(
                run_id=run_id, task_id=task_id, worker=worker, now=now, started_at=started_at
            )
            if claim is not None:
                return claim
        return _claim(run_id=run_id, task_id=task_id, worker=worker, now=now, started_at=started_at)
    except UnreadableCredentials:  # read with the account; the claim was rolled back
        return _fail_unreadable(run_id=run_id)


UNREADABLE_CREDENTIALS = (
    "Caly cannot read this account's stored password or authorisation (the encryption key it "
    "was stored with is no longer configured). Reconnect the account to enter it again."
)


@transaction.atomic
def _fail_unreadable(*, run_id: int) -> Claim:
    """End a run whose account's credentials no key decrypts, and ask for a reconnect."""
    account_id = SyncRun.objects.filter(pk=run_id).values_list("account_id", flat=True).first()
    if account_id is None:
        return Claim(ClaimOutcome.DONE)
    lease_lock(account_id=account_id)
    # The account is not read: its credentials are what cannot be read.
    run = SyncRun.objects.select_for_update().get(pk=run_id)
    if run.state in SyncRun.TERMINAL_STATES or run.state == SyncRun.State.RUNNING:
        return Claim(ClaimOutcome.DONE, run)
    run.state, run.finished_at = SyncRun.State.FAILED, timezone.now()
    run.error = UNREADABLE_CREDENTIALS
    run.save(update_fields=["state", "finished_at", "error"])
    Account.objects.filter(pk=account_id).update(
        status=Account.Status.NEEDS_REAUTH, last_error=UNREADABLE_CREDENTIALS
    )
    logger.error("sync run %s failed: the account's credentials cannot be decrypted", run_id)
    return Claim(ClaimOutcome.DONE, run)


def _claim_by_sql(
    *, run_id: int, task_id: str, worker: str, now: dt.datetime, started_at: dt.datetime
) -> Claim | None:
    """The common claim (the lease free, the run queued and due) in one statement, `sql.CLAIM`;
    None for any other case, with nothing changed."""
    token = lease_token(run_id=run_id, worker=worker)
    params = {
        "run": run_id,
        "holder": token,
        "ttl": lease_ttl(),
        "started_at": started_at,
        "task_id": task_id,
        "due_by": now + RETRY_EARLY,
    }
    with transaction.atomic():
        run = next(iter(SyncRun.objects.raw(sql.CLAIM, params)), None)
        if run is None:  # the lease may have been taken for a run that was not claimable
            transaction.set_rollback(True)
            return None
        run.account = next(iter(Account.objects.raw(sql.ACCOUNT, [run.account_id])))
    return Claim(ClaimOutcome.ACQUIRED, run, token=token)


@transaction.atomic
def _claim(
    *, run_id: int, task_id: str, worker: str, now: dt.datetime, started_at: dt.datetime
) -> Claim:
    """Every case of a claim, by the ORM, with the account's lease and then the run locked."""
    of_run = SyncRun.objects.filter(pk=run_id).values("account_id")
    # The lease of the run's account, locked, in one statement; a first sync adds the row.
    lease = locked_leases().filter(account_id=Subquery(of_run)).first()
    if lease is None:
        account_id = of_run.values_list("account_id", flat=True).first()
        if account_id is None:
            return Claim(ClaimOutcome.DONE)
        lease = lease_lock(account_id=account_id)
    # The account comes along (not locked): the sync needs it next.
    runs = SyncRun.objects.select_related("account").select_for_update(of=("self",))
    run = runs.filter(pk=run_id).first()
    if run is None or run.state in SyncRun.TERMINAL_STATES:
        return Claim(ClaimOutcome.DONE, run)
    alive = lease_alive(lease)
    if run.state == SyncRun.State.RUNNING:
        if alive and lease.run_id == run.pk:
            # A second delivery while the first may still be syncing (a broker connection was
            # lost): look again once the lease would have lapsed.
            lapses_in = _seconds_until(lease.expires_at, lease.db_now)
            return Claim(ClaimOutcome.LATER, run, delay=lapses_in + 1)
        if not run_recover_interrupted(run=run, now=now):
            return Claim(ClaimOutcome.DONE, run)
    if run.retry_at and run.retry_at > now + RETRY_EARLY:
        return Claim(ClaimOutcome.LATER, run, delay=_seconds_until(run.retry_at, now))
    if alive:
        if not run.deferred:
            run.deferred = True
            run.save(update_fields=["deferred"])
        return Claim(ClaimOutcome.DEFERRED, run)
    token = lease_take(lease=lease, run=run, worker=worker)
    run.state = SyncRun.State.RUNNING
    # The first start is the one the order promise is about.
    run.started_at = run.started_at or started_at
    run.attempts += 1
    run.deferred = False
    run.retry_at = None
    if task_id:
        run.task_id = task_id
    run.save(update_fields=["state", "started_at", "attempts", "deferred", "retry_at", "task_id"])
    return Claim(ClaimOutcome.ACQUIRED, run, token=token)


def run_recover_interrupted(*, run: SyncRun, now: dt.datetime) -> bool:
    """A `running` run whose worker died or handed it back: queue it again, or end it.

    Call with the account's lease and the run locked. Returns True if the run is queued again
    (its caller then delivers it), False if it was ended.
    """
    sibling = (
        SyncRun.objects.filter(account_id=run.account_id, state=SyncRun.State.QUEUED)
        .exclude(pk=run.pk)
        .values_list("pk", flat=True)
        .first()
    )
    if run.attempts >= settings.CALY_SYNC_MAX_ATTEMPTS:
        error = f"The worker running this sync stopped {run.attempts} times; gave up."
    elif sibling is not None:
        error = f"Interrupted when its worker stopped; sync #{sibling} syncs the account again."
    else:
        run.state = SyncRun.State.QUEUED
        run.published_at = None
        run.error = "Interrupted when its worker stopped; queued again."
        run.save(update_fields=["state", "published_at", "error"])
        logger.warning("sync run %s was interrupted; queued again", run.pk)
        return True
    run.state, run.finished_at, run.error = SyncRun.State.FAILED, now, error
    run.save(update_fields=["state", "finished_at", "error"])
    logger.warning("sync run %s was interrupted and ended: %s", run.pk, error)
    return False


def run_end(
    *, run: SyncRun, counts: Counts, token: str, ending: Ending | None
) -> tuple[bool, SyncRun | None]:
    """Give the account's lease back and record how the run ended, in one transaction; then
    hand the account over to a run that waited for it.

    `ending` None: the run stays as it is (queued again for a retry, handed back, or left to the
    worker that took its lease over). Returns whether the ending was recorded (False: the run is
    gone or no longer running, or `token` no longer held the lease, and then nothing at all was
    written), and a deferred run of the account that is now due, for the caller to publish.
    """
    now = timezone.now()
    if ending is not None and sql.in_use():
        return _end_by_sql(run=run, counts=counts, token=token, ending=ending, now=now)
    with transaction.atomic():
        if not lease_release(account_id=run.account_id, token=token):
            return False, None  # taken over: its new holder records the run
        if counts.calendars_unchanged:
            Calendar.objects.filter(pk__in=counts.calendars_unchanged).update(last_synced_at=now)
        account = {**counts.account, **(ending.account if ending is not None else {})}
        if account:
            Account.objects.filter(pk=run.account_id).update(**account)
        recorded = True
        if ending is not None:
            recorded = bool(
                SyncRun.objects.filter(pk=run.pk, state=SyncRun.State.RUNNING).update(
                    state=ending.state,
                    finished_at=now,
                    error=ending.error,
                    events_processed=F("events_processed") + counts.events_unrecorded,
                    **counts.calendar_counts(),
                    **counts.event_counts(),
                )
            )
    return recorded, run_hand_over(account_id=run.account_id)


def _end_by_sql(
    *, run: SyncRun, counts: Counts, token: str, ending: Ending, now: dt.datetime
) -> tuple[bool, SyncRun | None]:
    """`run_end` with an ending, in the two statements of `sql.LEASE_RELEASE` and `sql.END`."""
    account = {**counts.account, **ending.account}
    params = {
        "run": run.pk,
        "account": run.account_id,
        "holder": token,
        "now": now,
        "unchanged": counts.calendars_unchanged,
        **{name: account.get(name) for name in ACCOUNT_ENDING_FIELDS},
        "state": ending.state,
        "error": ending.error,
        "events_unrecorded": counts.events_unrecorded,
        **counts.calendar_counts(),
        **counts.event_counts(),
    }
    if set(account) - set(ACCOUNT_ENDING_FIELDS):
        raise ValueError(
            f"sql.END does not write {sorted(set(account) - set(ACCOUNT_ENDING_FIELDS))}"
        )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.LEASE_RELEASE, params)
        if not cursor.rowcount:
            return False, None  # taken over: its new holder records the run
        cursor.execute(sql.END, params)
        recorded, handed_over = cursor.fetchone()
    return recorded, SyncRun.objects.get(pk=handed_over) if handed_over else None


def run_hand_over(*, account_id: int) -> SyncRun | None:
    """After the lease is released: a deferred queued run of the account, now due.

    The caller publishes that run; until RabbitMQ confirms, it counts as unpublished, so the
    reaper sends it if the caller cannot.
    """
    # An account has at most one queued run, and most syncs find none: then this UPDATE is the
    # only statement. A claim of that run meanwhile finds the lease free and takes the run:
    # then there is nothing to hand over.
    queued = SyncRun.objects.filter(account_id=account_id, state=SyncRun.State.QUEUED)
    if not queued.filter(deferred=True).update(deferred=False, published_at=None):
        return None
    return queued.first()


def run_retry_later(
    *, run: SyncRun, counts: Counts, delay: int, note: str, continuation: bool
) -> SyncRun | None:
    """Queue the run again, to come back in `delay` seconds; returns the run that will.

    That is `run` itself, unless a follow-up was queued meanwhile (only one run of an account
    may be queued): then this run stays running for its caller to end, the follow-up inherits
    the wait and is returned; None if the follow-up has started meanwhile.
    """
    retry_at = timezone.now() + dt.timedelta(seconds=delay)
    try:
        with transaction.atomic():
            SyncRun.objects.filter(pk=run.pk).update(
                state=SyncRun.State.QUEUED,
                # A sync that ran out of time made progress: continuing it is not an attempt.
                attempts=F("attempts") - 1 if continuation else F("attempts"),
                retry_at=retry_at,
                published_at=None,
                error=note,
                **counts.event_counts(),
            )
        return run
    except IntegrityError:  # a follow-up run is already queued for the account
        follow_up = SyncRun.objects.filter(
            account_id=run.account_id, state=SyncRun.State.QUEUED
        ).first()
        if follow_up is not None:
            SyncRun.objects.filter(pk=follow_up.pk).filter(
                Q(retry_at=None) | Q(retry_at__lt=retry_at)
            ).update(retry_at=retry_at)
        return follow_up


def run_hand_back(*, run: SyncRun, counts: Counts) -> None:
    """Leave the run as interrupted; its requeued message (or the reaper) starts it again."""
    SyncRun.objects.filter(pk=run.pk).update(
        attempts=F("attempts") - 1,  # not the run's fault
        **counts.event_counts(),
    )
    logger.warning("worker shutting down: sync run %s handed back to the queue", run.pk)


def run_record_progress(*, run: SyncRun, **values) -> None:
    """What a running sync has done so far, for someone watching (`SyncRun.progress`)."""
    SyncRun.objects.filter(pk=run.pk).update(**values)


@transaction.atomic
def run_record_skipped(*, run: SyncRun, entries: list[dict], kept: int) -> None:
    """Name objects the sync could not read (the first `kept` of the run are recorded)."""
    locked = SyncRun.objects.select_for_update().get(pk=run.pk)
    locked.skipped = (locked.skipped + entries)[:kept]
    locked.save(update_fields=["skipped"])


def run_mark_published(*, run_id: int) -> None:
    """RabbitMQ confirmed the run's message (the reaper resends runs left unpublished)."""
    SyncRun.objects.filter(pk=run_id, published_at=None).update(published_at=timezone.now())


def run_mark_unpublished(*, run_id: int) -> None:
    SyncRun.objects.filter(pk=run_id, state=SyncRun.State.QUEUED).update(published_at=None)


@transaction.atomic
def run_reap(*, run_id: int, account_id: int, now: dt.datetime) -> bool | None:
    """A `running` run with no live lease (its worker died): queue it again (True) or end it
    (False). None: the run is fine, or not running any more."""
    lease = lease_lock(account_id=account_id)
    run = SyncRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.state != SyncRun.State.RUNNING:
        return None
    if lease_alive(lease) and lease.run_id == run.pk:
        return None
    return run_recover_interrupted(run=run, now=now)


@transaction.atomic
def run_free_deferred(*, run_id: int, account_id: int, now: dt.datetime) -> bool:
    """A deferred run whose account is free (the run that was to hand it over died): make it
    due again; True if it was."""
    if lease_alive(lease_lock(account_id=account_id)):
        return False
    return bool(
        SyncRun.objects.filter(pk=run_id, state=SyncRun.State.QUEUED).update(
            deferred=False, published_at=None
        )
    )
