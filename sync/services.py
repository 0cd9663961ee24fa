"""The sync service: connect accounts, request syncs, and run them (called by the Celery task).

Writes live here; reading helpers are in `sync.selectors`. Nothing here runs inside a web
request except recording a request and publishing its id.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import MD5
from django.utils import timezone
from kombu.exceptions import KombuError, OperationalError

from calendars.models import Account, Calendar, Event
from caly.rows import (
    Statement,
    Update,
    read_rows,
    update_rows,
    upsert_sql,
    write_together,
)
from sync import lifecycle, retry, selectors
from sync.engine import Plan, StoredEvent, normalize_href, plan_changes
from sync.leases import (
    LeaseHeartbeat,
    lease_alive,
    lease_hand_over,
    lease_lock,
    lease_release,
    run_claim,
    run_recover_interrupted,
    token_run_id,
)
from sync.models import SyncRun
from sync.providers import provider_class, provider_for
from sync.providers.base import (
    AuthError,
    ChangeBatch,
    Cursor,
    Provider,
    ProviderError,
    RemoteCalendar,
    SkippedObject,
    TransientError,
)

logger = logging.getLogger(__name__)

MAX_SKIPPED_RECORDED = 100
EVENT_FIELDS = (
    "href",
    "etag",
    "summary",
    "description",
    "location",
    "start",
    "end",
    "all_day",
    "timezone",
    "status",
    "rrule",
    "rdate",
    "exdate",
    "raw",
    "remote_last_modified",
    "updated_at",
)


class BrokerUnavailable(Exception):
    """The sync request could not be handed to RabbitMQ; nothing was recorded."""


class AccountNotSyncable(Exception):
    def __init__(self, account: Account):
        super().__init__(
            f"Account {account.pk} is {account.get_status_display().lower()}; "
            "reconnect it before syncing."
        )


# --- accounts -----------------------------------------------------------------------------
def account_connect(
    *,
    owner,
    provider: str,
    name: str,
    url: str = "",
    username: str = "",
    credentials: dict,
) -> Account:
    """Check the account against its server, then store it with its calendars.

    Raises ProviderError subclasses (ConnectError, AuthError) before anything is written.
    """
    client = provider_class(provider)(url=url, username=username, credentials=credentials)
    try:
        remote = client.discover()
    finally:
        client.close()
    with transaction.atomic():
        account = Account.objects.create(
            owner=owner,
            provider=provider,
            name=name,
            url=url,
            # Discovery may learn who the account is (Google: the address of its calendars).
            username=client.username or username,
            credentials=credentials,
            home_url=client.home_url,
        )
        calendars_reconcile(account=account, remote=remote)
    return account


@transaction.atomic
def account_update(*, account: Account, credentials: dict | None = None, **fields) -> Account:
    """Change an account; new credentials make an account that needed them active again.

    An account an administrator disabled stays disabled.
    """
    for name, value in fields.items():
        setattr(account, name, value)
    if credentials:
        try:
            current = account.credentials
        except ImproperlyConfigured:  # unreadable with today's keys: the new ones replace them
            current = {}
        account.credentials = {**current, **credentials}
        if account.status == Account.Status.NEEDS_REAUTH:
            account.status = Account.Status.ACTIVE
        account.last_error = ""
    account.save()
    return account


def calendars_reconcile(*, account: Account, remote: Iterable[RemoteCalendar]) -> list[Calendar]:
    """Make the stored calendar list match the server's: add, rename, remove.

    Returns the calendars the server listed; each says whether it was just added (`is_new`: no
    events stored yet). A calendar the server leaves out is kept, events and all, the first time
    (`missing_since`): a listing that drops one calendar may be the server's hiccup, and deleting
    it would lose its events' ids. The next listing without it deletes it; one with it keeps it.
    """
    remote = list(remote)
    stored = read_rows(Calendar, {"account_id": account.pk}, order_by=("pk",))
    existing = {normalize_href(c.remote_id): c for c in stored}
    if not remote and existing:
        raise ProviderError(
            "The server listed no calendars at all; keeping the stored ones. "
            "If they were really removed, remove the account."
        )
    seen = set()
    result = []
    for item in remote:
        key = normalize_href(item.remote_id)
        seen.add(key)
        shown = {"name": item.name[:500], "color": item.color[:32], "timezone": item.timezone[:100]}
        calendar = existing.get(key)
        if calendar is None:
            calendar = Calendar.objects.create(account=account, remote_id=item.remote_id, **shown)
            calendar.is_new = True
        else:
            calendar.is_new = False
            changed = {n: v for n, v in shown.items() if getattr(calendar, n) != v}
            if calendar.missing_since is not None:
                changed["missing_since"] = None
            if changed:
                for name, value in changed.items():
                    setattr(calendar, name, value)
                calendar.save(update_fields=list(changed))
        result.append(calendar)
    missing = [c for key, c in existing.items() if key not in seen]
    gone = [c.pk for c in missing if c.missing_since is not None]
    if gone:
        Calendar.objects.filter(pk__in=gone).delete()
    newly_missing = [c.pk for c in missing if c.missing_since is None]
    if newly_missing:
        update_rows(Calendar, {"pk__in": newly_missing}, {"missing_since": timezone.now()})
        logger.warning(
            "account %s: calendars %s not listed by the server; deleted if the next sync does "
            "not list them either",
            account.pk,
            newly_missing,
        )
    return result


# --- requesting syncs ---------------------------------------------------------------------
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
        accounts = list(Account.objects.filter(owner=user, status=Account.Status.ACTIVE))
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


def sync_request_account(*, account: Account, trigger: str, publish: bool = True) -> SyncRun:
    return _request_account(account=account, trigger=trigger, publish=publish)[0]


def _request_account(*, account: Account, trigger: str, publish: bool) -> tuple[SyncRun, bool]:
    """The account's queued run, and whether this call added it."""
    with transaction.atomic():
        existing = SyncRun.objects.filter(account=account, state=SyncRun.State.QUEUED).first()
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                run = SyncRun.objects.create(
                    account=account, trigger=trigger, task_id=str(uuid.uuid4())
                )
        except IntegrityError:  # a concurrent request queued one first
            existing = SyncRun.objects.filter(account=account, state=SyncRun.State.QUEUED).first()
            if existing is not None:
                return existing, False
            # ...and it has started already: queue the follow-up after all.
            return _request_account(account=account, trigger=trigger, publish=publish)
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
        retry.publish_run(run_id=run.pk, task_id=run.task_id or str(uuid.uuid4()), delay=delay)
    except (OperationalError, KombuError, OSError) as exc:
        logger.error("could not publish sync run %s: %s", run.pk, type(exc).__name__)
        if withdraw_on_failure:
            _withdraw([run])
        raise BrokerUnavailable(
            "The sync queue (RabbitMQ) is unavailable; nothing was queued. Try again shortly."
        ) from exc
    update_rows(SyncRun, {"pk": run.pk, "published_at": None}, {"published_at": timezone.now()})


def _withdraw(runs: list[SyncRun]) -> int:
    """Delete these runs unless a worker has started them; returns how many were deleted.

    A message already published for one finds no run and is dropped."""
    withdrawn, _ = SyncRun.objects.filter(
        pk__in=[r.pk for r in runs], state=SyncRun.State.QUEUED, started_at=None
    ).delete()
    return withdrawn


def _publish_or_leave_to_reaper(run: SyncRun) -> None:
    try:
        sync_publish(run=run)
    except BrokerUnavailable:
        logger.warning("sync run %s stays queued until the reaper can publish it", run.pk)


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
        older_than=now - dt.timedelta(minutes=settings.CALY_RESYNC_MINUTES)
    )[:limit]
    return [
        sync_request_account(account=account, trigger=SyncRun.Trigger.SCHEDULE) for account in due
    ]


# --- running a sync -----------------------------------------------------------------------
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
    # Calendars found unchanged (nothing written): their last_synced_at is set with the ending.
    calendars_unchanged: list[int] = field(default_factory=list)
    # What the sync learnt about its account (a calendar home that moved), saved with the ending.
    account: dict = field(default_factory=dict)

    def add(self, plan: Plan) -> None:
        self.created += len(plan.create)
        self.updated += len(plan.update)
        self.deleted += len(plan.delete_ids)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def event_counts(self) -> dict:
        return {"created": self.created, "updated": self.updated, "deleted": self.deleted}

    def calendar_counts(self) -> dict:
        return {"calendars_total": self.calendars_total, "calendars_done": self.calendars_done}


@dataclass(frozen=True)
class Ending:
    """How a run ends: its final state and error, and what to record on its account."""

    state: str
    error: str = ""
    account: dict = field(default_factory=dict)


def sync_run_execute(
    *,
    run_id: int,
    task_id: str = "",
    worker: str = "",
    received_at: dt.datetime | None = None,
) -> dict:
    """Run one queued sync: take the account's lease, sync every selected calendar, record it.

    Safe to call twice for the same run (redelivery): a finished run is left alone, a run
    another worker is syncing waits for it, and a run whose worker died is taken over. A
    transient provider error puts the run back in the queue behind a broker-side delay.
    Returns a summary; `handed_back` means the worker is shutting down and the caller must
    requeue the message.
    """
    claim = run_claim(run_id=run_id, task_id=task_id, worker=worker, received_at=received_at)
    if claim.outcome == "later":
        try:
            retry.publish_run(
                run_id=run_id, task_id=task_id or str(uuid.uuid4()), delay=claim.delay
            )
        except (OperationalError, KombuError, OSError):
            # The reaper resends unpublished queued runs, and runs whose worker died.
            SyncRun.objects.filter(pk=run_id, state=SyncRun.State.QUEUED).update(published_at=None)
            logger.warning("sync run %s: could not publish its delayed message", run_id)
        return {"run": run_id, "state": claim.run.state, "back_in": claim.delay}
    if claim.outcome != "acquired":
        state = claim.run.state if claim.run is not None else "missing"
        return {"run": run_id, "state": state, "deferred": claim.outcome == "deferred"}
    run = claim.run
    # A retried or continued run adds to what its earlier attempts did.
    counts = Counts(created=run.created, updated=run.updated, deleted=run.deleted)
    outcome: str | Ending = "interrupted"
    try:
        with LeaseHeartbeat(account_id=run.account_id, token=claim.token) as heartbeat:
            outcome = _execute(run, counts=counts, heartbeat=heartbeat)
    finally:
        ending = outcome if isinstance(outcome, Ending) else None
        recorded, waiting = _end(run, counts, token=claim.token, ending=ending)
    if waiting is not None:
        _publish_or_leave_to_reaper(waiting)
    if ending is not None:
        if not recorded:  # the run (or its account) was deleted while it synced
            return {"run": run_id, "state": "missing"}
        return {"run": run.pk, "state": ending.state, **counts.event_counts()}
    run = SyncRun.objects.filter(pk=run.pk).first()
    if run is None:
        return {"run": run_id, "state": "missing"}
    if outcome == "retry":
        _publish_or_leave_to_reaper(run)
    return {
        "run": run.pk,
        "state": run.state,
        "created": run.created,
        "updated": run.updated,
        "deleted": run.deleted,
        "handed_back": outcome == "hand_back",
    }


def _end(
    run: SyncRun, counts: Counts, *, token: str, ending: Ending | None
) -> tuple[bool, SyncRun | None]:
    """Give the account's lease back and record how the run ended, in one transaction (one
    round trip on PostgreSQL); then hand the account over to a run that waited for it.

    Returns whether the ending was recorded (False: the run is gone), and a deferred run of
    the account that is now due, for the caller to publish.
    """
    now = timezone.now()
    # The lease first, then runs: the lock order of sync.leases.
    updates = [lease_release(account_id=run.account_id, token=token)]
    if counts.calendars_unchanged:
        unchanged = {"pk__in": counts.calendars_unchanged}
        updates.append(Update(Calendar, unchanged, {"last_synced_at": now}))
    account = {**counts.account, **(ending.account if ending is not None else {})}
    if account:
        updates.append(Update(Account, {"pk": run.account_id}, account))
    if ending is not None:
        values = {
            "state": ending.state,
            "finished_at": now,
            "error": ending.error,
            **counts.calendar_counts(),
            "events_processed": F("events_processed") + counts.events_unrecorded,
            **counts.event_counts(),
        }
        updates.append(Update(SyncRun, {"pk": run.pk}, values))
    matched = write_together(*updates)
    recorded = ending is None or bool(matched)
    return recorded, lease_hand_over(account_id=run.account_id)


class HandBack(Exception):
    """The worker is shutting down and its grace period is over: stop at this batch boundary."""


class DeadlineExceeded(TransientError):
    def __init__(self):
        seconds = settings.CALY_SYNC_DEADLINE_SECONDS
        limit = f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} s"
        super().__init__(
            f"The sync took longer than {limit}; it continues where it stopped.", retry_after=0
        )


def _execute(run: SyncRun, *, counts: Counts, heartbeat: LeaseHeartbeat) -> str | Ending:
    """Sync the run's account; returns how the run ends, or "retry" (queued again), "hand_back"
    or "lost" (another worker took the lease over)."""
    deadline = time.monotonic() + settings.CALY_SYNC_DEADLINE_SECONDS
    try:
        _sync_account(run, counts=counts, heartbeat=heartbeat, deadline=deadline)
    except HandBack:
        return _hand_back(run, counts)
    except LeaseLost:
        # Another worker holds the account's lease and is syncing this very run: leave the run
        # to it rather than overwrite its state.
        logger.warning("sync run %s: lease lost; leaving the run to its new holder", run.pk)
        return "lost"
    except TransientError as exc:
        return _retry_or_fail(run, counts, exc)
    except AuthError as exc:
        account = {"status": Account.Status.NEEDS_REAUTH, "last_error": str(exc)}
        return Ending(SyncRun.State.FAILED, error=str(exc), account=account)
    except ProviderError as exc:
        return Ending(SyncRun.State.FAILED, error=str(exc), account={"last_error": str(exc)})
    except Exception as exc:
        logger.exception("sync run %s failed", run.pk)
        error = f"Internal error while syncing ({type(exc).__name__}); the team has the details."
        return Ending(SyncRun.State.FAILED, error=error, account={"last_error": error})
    account = {"last_synced_at": timezone.now(), "last_error": ""}
    return Ending(SyncRun.State.SUCCEEDED, account=account)


def _checkpoint(*, heartbeat: LeaseHeartbeat, deadline: float) -> None:
    """Between batches (nothing half-written): stop if the lease, the time or the worker is up."""
    if heartbeat.lost:
        raise LeaseLost()
    if lifecycle.should_hand_back():
        raise HandBack()
    if time.monotonic() > deadline:
        raise DeadlineExceeded()


def _retry_or_fail(run: SyncRun, counts: Counts, exc: TransientError) -> str | Ending:
    """Queue the run again behind a backoff delay, or fail it once its attempts are used up.

    Only one run of an account may be queued: if a follow-up was queued meanwhile, this run
    ends and the follow-up inherits the wait.
    """
    max_attempts = settings.CALY_SYNC_MAX_ATTEMPTS
    attempts = SyncRun.objects.values_list("attempts", flat=True).get(pk=run.pk)
    # A sync that ran out of time made progress; continuing it is not a failed attempt.
    continuation = isinstance(exc, DeadlineExceeded)
    if attempts >= max_attempts and not continuation:
        error = f"{exc} Gave up after {attempts} attempts."
    elif exc.retry_after and exc.retry_after > settings.CALY_RETRY_MAX_SECONDS:
        error = f"{exc} The server asked to wait {exc.retry_after:.0f} s; not retrying."
    else:
        delay = retry.backoff_seconds(attempt=attempts, retry_after=exc.retry_after)
        retry_at = timezone.now() + dt.timedelta(seconds=delay)
        note = f"{exc} Retrying in {delay} s (attempt {attempts} of {max_attempts} failed)."
        try:
            with transaction.atomic():
                SyncRun.objects.filter(pk=run.pk).update(
                    state=SyncRun.State.QUEUED,
                    attempts=F("attempts") - 1 if continuation else F("attempts"),
                    retry_at=retry_at,
                    published_at=None,
                    error=note,
                    **counts.event_counts(),
                )
            logger.info("sync run %s: %s", run.pk, note)
            return "retry"
        except IntegrityError:  # a follow-up run is already queued for the account
            follow_up = SyncRun.objects.filter(
                account_id=run.account_id, state=SyncRun.State.QUEUED
            ).first()
            if follow_up is None:  # it started meanwhile; it syncs the account anyway
                error = f"{exc} A newer sync of the account took over."
            else:
                SyncRun.objects.filter(pk=follow_up.pk).filter(
                    Q(retry_at=None) | Q(retry_at__lt=retry_at)
                ).update(retry_at=retry_at)
                error = f"{exc} Sync #{follow_up.pk} tries again in {delay} s."
    return Ending(SyncRun.State.FAILED, error=error, account={"last_error": str(exc)})


def _hand_back(run: SyncRun, counts: Counts) -> str:
    """Leave the run as interrupted; its requeued message (or the reaper) starts it again."""
    SyncRun.objects.filter(pk=run.pk).update(
        attempts=F("attempts") - 1,  # not the run's fault
        **counts.event_counts(),
    )
    logger.warning("worker shutting down: sync run %s handed back to the queue", run.pk)
    return "hand_back"


def _sync_account(
    run: SyncRun, *, counts: Counts, heartbeat: LeaseHeartbeat, deadline: float
) -> None:
    account = run.account  # read with the run when it was claimed
    provider = provider_for(account)
    try:
        remote = provider.discover()
        if provider.home_url != account.home_url:
            counts.account["home_url"] = provider.home_url
        calendars = calendars_reconcile(account=account, remote=remote)
        by_id = {normalize_href(r.remote_id): r for r in remote}
        selected = [c for c in calendars if c.selected]
        counts.calendars_total, counts.calendars_done = len(selected), 0
        # Someone watching sees the sync past discovery ("0/1 calendars") while it lists events.
        update_rows(SyncRun, {"pk": run.pk}, counts.calendar_counts())
        for calendar in selected:
            synced_at = calendar.last_synced_at
            _sync_calendar(
                run,
                provider,
                calendar,
                by_id[normalize_href(calendar.remote_id)],
                counts=counts,
                heartbeat=heartbeat,
                deadline=deadline,
            )
            counts.calendars_done += 1
            if calendar.last_synced_at == synced_at:  # its cursor did not move
                counts.calendars_unchanged.append(calendar.pk)
            if counts.calendars_done < counts.calendars_total:  # the last one ends the run
                update_rows(SyncRun, {"pk": run.pk}, {"calendars_done": counts.calendars_done})
    finally:
        provider.close()


class LeaseLost(ProviderError):
    def __init__(self):
        super().__init__("Another worker took over this account's sync; stopped to avoid a clash.")


def _sync_calendar(
    run: SyncRun,
    provider: Provider,
    calendar: Calendar,
    remote: RemoteCalendar,
    *,
    counts: Counts,
    heartbeat: LeaseHeartbeat,
    deadline: float,
) -> None:
    # A calendar this sync added has no events to read until its first batch is stored.
    nothing_stored = getattr(calendar, "is_new", False)
    known = {} if nothing_stored else selectors.StoredEtags(calendar.pk)
    cursor = Cursor(sync_token=calendar.sync_token, ctag=calendar.ctag)
    for batch in provider.changes(remote, cursor=cursor, known=known):
        _checkpoint(heartbeat=heartbeat, deadline=deadline)
        plan = events_apply(calendar=calendar, batch=batch, nothing_stored=nothing_stored)
        nothing_stored = nothing_stored and not (batch.objects or batch.deleted_hrefs)
        counts.add(plan)
        counts.events_unrecorded += sum(len(o.events) for o in batch.objects)
        counts.events_unrecorded += len(batch.deleted_hrefs)
        last = batch.cursor is not None and counts.calendars_done + 1 == counts.calendars_total
        if counts.events_unrecorded and not last:  # an empty batch has no progress to show
            updates = {"events_processed": F("events_processed") + counts.events_unrecorded}
            if counts.changed:
                updates.update(counts.event_counts())
            update_rows(SyncRun, {"pk": run.pk}, updates)
            counts.events_unrecorded = 0
        if batch.skipped:
            _record_skipped(run, calendar, batch)


def _record_skipped(run: SyncRun, calendar: Calendar, batch: ChangeBatch) -> None:
    with transaction.atomic():
        locked = SyncRun.objects.select_for_update().get(pk=run.pk)
        entries = [
            {"calendar": calendar.name, "href": s.href, "reason": s.reason} for s in batch.skipped
        ]
        locked.skipped = (locked.skipped + entries)[:MAX_SKIPPED_RECORDED]
        locked.save(update_fields=["skipped"])


def events_apply(*, calendar: Calendar, batch: ChangeBatch, nothing_stored: bool = False) -> Plan:
    """Store one batch of changes; the calendar's cursor moves only with the last batch.

    Everything the batch writes (deletions, moved hrefs, the events, the cursor) is one
    transaction, sent as one query on PostgreSQL. A batch with nothing in it and the cursor where
    it was (a sync that found no change) costs no statement at all. `nothing_stored`: the
    calendar has no events yet (it was added by this sync and this is its first batch), so there
    is nothing to compare with.
    """
    cursor = batch.cursor
    if not (batch.objects or batch.deleted_hrefs) and (
        cursor is None or (cursor.sync_token, cursor.ctag) == (calendar.sync_token, calendar.ctag)
    ):
        return Plan()
    _skip_oversized(batch)
    # Read outside the writing transaction: the account's lease keeps other syncs away.
    stored = [] if nothing_stored else _events_stored(calendar, batch)
    plan = plan_changes(stored=stored, objects=batch.objects, deleted_hrefs=batch.deleted_hrefs)
    writes: list[Update | Statement] = []
    quote = connection.ops.quote_name
    table, id_column = quote(Event._meta.db_table), quote(Event._meta.pk.column)
    for ids in _pages(plan.delete_ids, UPSERT_PAGE):
        sql = f"DELETE FROM {table} WHERE {id_column} IN ({', '.join(['%s'] * len(ids))})"
        writes.append(Statement(sql, ids))
    writes += [
        Update(Event, {"pk": pk}, {"href": normalize_href(w.href), "etag": w.etag})
        for pk, w in plan.relocate
    ]
    if plan.writes:
        writes += _events_upsert(calendar, plan.writes, now=timezone.now())
    if cursor is not None:
        calendar.sync_token, calendar.ctag = cursor.sync_token, cursor.ctag
        calendar.last_synced_at = timezone.now()
        cursor_fields = ("sync_token", "ctag", "last_synced_at")
        writes.append(
            Update(Calendar, {"pk": calendar.pk}, {f: getattr(calendar, f) for f in cursor_fields})
        )
    write_together(*writes)
    return plan


def _events_stored(calendar: Calendar, batch: ChangeBatch) -> list[StoredEvent]:
    """The stored events a batch touches: by href (changed or deleted objects) or by UID."""
    hrefs = {normalize_href(o.href) for o in batch.objects}
    hrefs |= {normalize_href(h) for h in batch.deleted_hrefs}
    uids = {e.uid for o in batch.objects for e in o.events}
    return [
        StoredEvent(*row)
        for row in Event.objects.filter(calendar=calendar)
        .filter(Q(href__in=hrefs) | Q(uid__in=uids))
        .annotate(raw_digest=MD5("raw"))
        .values_list("id", "uid", "recurrence_id", "href", "etag", "raw_digest")
    ]


def _skip_oversized(batch: ChangeBatch) -> None:
    """An object with a value longer than its column is skipped and named, not fatal to the run."""
    kept = []
    for obj in batch.objects:
        too_long = [
            name
            for name, value in (("href", obj.href), ("etag", obj.etag))
            if len(value) > EVENT_LIMITS[name]
        ] + [
            name
            for event in obj.events
            for name in ("uid", "recurrence_id", "timezone", "status")
            if len(getattr(event, name)) > EVENT_LIMITS[name]
        ]
        if too_long:
            reason = f"{', '.join(sorted(set(too_long)))} too long to store"
            batch.skipped.append(SkippedObject(href=obj.href[:300], reason=reason))
        else:
            kept.append(obj)
    batch.objects = kept


EVENT_LIMITS = {
    name: Event._meta.get_field(name).max_length
    for name in ("href", "etag", "uid", "recurrence_id", "timezone", "status")
}


# Columns of an upsert, in order; the last ones are only set when a row is created.
UPSERT_COLUMNS = ("calendar", "uid", "recurrence_id", *EVENT_FIELDS, "created_at")
UPSERT_PAGE = 500  # rows per INSERT (or ids per DELETE) statement


def _events_upsert(calendar: Calendar, writes, *, now) -> list[Statement]:
    """The INSERTs of events by (calendar, UID, RECURRENCE-ID), existing ones updated instead,
    UPSERT_PAGE rows a statement.

    Written here rather than by bulk_create: Django spends longer preparing twenty fields per
    row than the database takes to store them, which made it the largest part of a big first
    sync. Only the fields the database driver cannot take as they are (dates and times on
    SQLite, the JSON lists) go through their field's preparation.
    """
    db = connection
    # What the driver cannot take as it is: the JSON lists; dates and times too, off PostgreSQL.
    prepared = ("rdate", "exdate")
    if db.vendor != "postgresql":
        prepared += ("start", "end", "remote_last_modified")
    prepare = [
        (UPSERT_COLUMNS.index(n), Event._meta.get_field(n).get_db_prep_save) for n in prepared
    ]
    now = Event._meta.get_field("updated_at").get_db_prep_save(now, db)
    rows = []
    for w in writes:
        event = w.event
        row = [
            calendar.pk,
            event.uid,
            event.recurrence_id,
            normalize_href(w.href),
            w.etag,
            event.summary,
            event.description,
            event.location,
            event.start,
            event.end,
            event.all_day,
            event.timezone,
            event.status,
            event.rrule,
            list(event.rdate),
            list(event.exdate),
            w.raw,
            event.last_modified,
            now,
            now,
        ]
        for i, field_prep in prepare:
            row[i] = field_prep(row[i], db)
        rows.append(row)
    limit = db.features.max_query_params or UPSERT_PAGE * len(UPSERT_COLUMNS)
    one = f"({', '.join(['%s'] * len(UPSERT_COLUMNS))})"
    statements = []
    for chunk in _pages(rows, min(UPSERT_PAGE, limit // len(UPSERT_COLUMNS))):
        sql = upsert_sql(
            Event,
            UPSERT_COLUMNS,
            conflict=("calendar", "uid", "recurrence_id"),
            update=EVENT_FIELDS,
            rows=", ".join([one] * len(chunk)),
        )
        statements.append(Statement(sql, [value for row in chunk for value in row]))
    return statements


def _pages(items: list, size: int) -> list[list]:
    size = max(size, 1)
    return [items[start : start + size] for start in range(0, len(items), size)]


# --- the reaper ---------------------------------------------------------------------------
# A queued run not confirmed by RabbitMQ this long after it was due is sent again (the publish
# right after commit normally takes milliseconds; the margin avoids racing it).
UNPUBLISHED_GRACE = dt.timedelta(seconds=30)


def sync_runs_reap(*, now: dt.datetime | None = None) -> dict:
    """Put back on the queue what a dead worker or a broker outage left behind.

    - `running` runs whose lease lapsed (their worker died): queued again, or failed with a
      readable error once their attempts are used up or a newer run of the account is queued;
    - deferred runs whose account is free (the run that was to hand them back died);
    - queued runs RabbitMQ never confirmed (the broker was away when they were published).
    Called by the `sync.reap_stale_runs` periodic task; safe to run anywhere, any number of times.
    """
    now = now or timezone.now()
    requeued, failed, freed, republished = [], [], [], []
    for run_id, account_id in SyncRun.objects.filter(state=SyncRun.State.RUNNING).values_list(
        "pk", "account_id"
    ):
        with transaction.atomic():
            lease = lease_lock(account_id)
            run = SyncRun.objects.select_for_update().filter(pk=run_id).first()
            if run is None or run.state != SyncRun.State.RUNNING:
                continue
            if lease_alive(lease, now) and token_run_id(lease.holder) == run.pk:
                continue
            (requeued if run_recover_interrupted(run=run, now=now) else failed).append(run)
    for run_id, account_id in SyncRun.objects.filter(
        state=SyncRun.State.QUEUED, deferred=True
    ).values_list("pk", "account_id"):
        with transaction.atomic():
            lease = lease_lock(account_id)
            if lease_alive(lease, now):
                continue
            if SyncRun.objects.filter(pk=run_id, state=SyncRun.State.QUEUED).update(
                deferred=False, published_at=None
            ):
                freed.append(run_id)
    due = Q(retry_at=None, requested_at__lt=now - UNPUBLISHED_GRACE) | Q(
        retry_at__lt=now - UNPUBLISHED_GRACE
    )
    unpublished = SyncRun.objects.filter(
        due, state=SyncRun.State.QUEUED, deferred=False, published_at=None
    )
    # Requeued and freed runs are published even within the grace: nobody else will.
    now_due = [r.pk for r in requeued] + freed
    to_publish = list(SyncRun.objects.filter(pk__in=now_due)) + list(
        unpublished.exclude(pk__in=now_due)
    )
    for run in to_publish:
        try:
            sync_publish(run=run)
        except BrokerUnavailable:
            break  # still away; the next tick tries again
        republished.append(run.pk)
    summary = {
        "requeued": [r.pk for r in requeued],
        "failed": [r.pk for r in failed],
        "published": republished,
    }
    if any(summary.values()):
        logger.warning("reaper: %s", summary)
    return summary
