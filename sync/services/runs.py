"""Running one sync: claim the run, sync every selected calendar of its account batch by batch,
and record how it ended (called by the `sync.run_sync` task)."""

from __future__ import annotations

import enum
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from calendars.models import Account, Calendar
from sync import broker, lifecycle, selectors, states
from sync.engine import normalize_href
from sync.leases import LeaseHeartbeat, LeaseLost, lease_fence
from sync.models import SyncRun, Webhook
from sync.providers import provider_for
from sync.providers.base import AuthError, Provider, ProviderError, TransientError
from sync.remote import ChangeBatch, Cursor, Fetching, RemoteCalendar
from sync.services.accounts import account_home_url_check, calendars_reconcile
from sync.services.requests import BROKER_ERRORS, sync_publish_or_leave_to_reaper
from sync.services.store import events_apply
from sync.services.webhooks import deliveries_record
from sync.services.writes import writes_push
from sync.states import ClaimOutcome, Counts, Ending

logger = logging.getLogger(__name__)

MAX_SKIPPED_RECORDED = 100


class Interruption(enum.Enum):
    """Why a run stopped without an ending of its own."""

    RETRY = "retry"  # queued again behind a backoff delay
    HAND_BACK = "hand_back"  # the worker is shutting down: its message goes back to the queue
    LOST = "lost"  # another worker took the account's lease over and goes on with the run


@dataclass
class RunResult:
    """What a delivery of a run's message came to: the task's result, as the admin shows it."""

    run: int
    state: str
    counts: dict = field(default_factory=dict)
    back_in: int | None = None  # published again to come back in that many seconds
    deferred: bool = False  # waits for the account's current sync to hand it over
    handed_back: bool = False  # the worker is stopping: requeue the message
    lease_lost: bool = False  # another worker took the account's lease over; this one stopped

    def summary(self) -> dict:
        summary = {"run": self.run, "state": self.state, **self.counts}
        if self.back_in is not None:
            summary["back_in"] = self.back_in
        if self.deferred:
            summary["deferred"] = True
        if self.handed_back:
            summary["handed_back"] = True
        if self.lease_lost:
            summary["lease_lost"] = True
        return summary


class HandBack(Exception):
    """The worker is shutting down and its grace period is over: stop at this batch boundary."""


class DeadlineExceeded(TransientError):
    def __init__(self):
        seconds = settings.CALY_SYNC_DEADLINE_SECONDS
        limit = f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} s"
        super().__init__(
            f"The sync took longer than {limit}; it continues where it stopped.", retry_after=0
        )


def sync_run_execute(
    *,
    run_id: int,
    task_id: str = "",
    worker: str = "",
    received_at=None,
) -> RunResult:
    """Run one queued sync: take the account's lease, sync every selected calendar, record it.

    Safe to call twice for the same run (redelivery): a finished run is left alone, a run
    another worker is syncing waits for it, and a run whose worker died is taken over. A
    transient provider error puts the run back in the queue behind a broker-side delay.
    """
    try:
        claim = states.run_claim(
            run_id=run_id, task_id=task_id, worker=worker, received_at=received_at
        )
    except DatabaseError as exc:
        # The database is away or failing: nothing was claimed. Come back later; if even that
        # cannot be sent, the reaper republishes runs that were published but never started.
        # (The worker's task_postrun hook closes a connection that errored.)
        delay = broker.backoff_seconds(attempt=1)
        logger.warning("sync run %s: claim failed (%s); back in %s s", run_id, exc, delay)
        _publish_later(run_id=run_id, task_id=task_id, delay=delay, mark=False)
        return RunResult(run_id, SyncRun.State.QUEUED, back_in=delay)
    if claim.outcome is ClaimOutcome.LATER:
        _publish_later(run_id=run_id, task_id=task_id, delay=claim.delay, mark=True)
        return RunResult(run_id, claim.run.state, back_in=claim.delay)
    if claim.outcome is not ClaimOutcome.ACQUIRED:
        state = claim.run.state if claim.run is not None else "missing"
        return RunResult(run_id, state, deferred=claim.outcome is ClaimOutcome.DEFERRED)
    run = claim.run
    # A retried or continued run adds to what its earlier attempts did.
    counts = Counts(created=run.created, updated=run.updated, deleted=run.deleted)
    outcome: Interruption | Ending | None = None  # None: the sync itself raised
    try:
        with LeaseHeartbeat(account_id=run.account_id, token=claim.token) as heartbeat:
            outcome = _execute(run, counts=counts, heartbeat=heartbeat)
    finally:
        ending = outcome if isinstance(outcome, Ending) else None
        recorded, waiting = states.run_end(run=run, counts=counts, token=claim.token, ending=ending)
    if waiting is not None:
        sync_publish_or_leave_to_reaper(run=waiting)
    if ending is not None and recorded and ending.state == SyncRun.State.FAILED:
        _notify_failure(run, ending)
    if ending is not None and recorded:
        return RunResult(run.pk, ending.state, counts=counts.event_counts())
    # Not recorded: the run (or its account) was deleted while it synced, or another worker
    # took the lease over and records the run itself.
    run = SyncRun.objects.filter(pk=run.pk).first()
    if run is None:
        return RunResult(run_id, "missing")
    if ending is not None or outcome is Interruption.LOST:
        return RunResult(run.pk, run.state, lease_lost=True)
    if outcome is Interruption.RETRY:
        sync_publish_or_leave_to_reaper(run=run)
    return RunResult(
        run.pk,
        run.state,
        counts={"created": run.created, "updated": run.updated, "deleted": run.deleted},
        handed_back=outcome is Interruption.HAND_BACK,
    )


def _notify_failure(run: SyncRun, ending: Ending) -> None:
    """`sync.failed` (and `account.needs_reauth`) to the owner's webhooks."""
    with transaction.atomic():
        data = {"account": run.account_id, "run": run.pk, "error": ending.error}
        deliveries_record(account_id=run.account_id, type=Webhook.Type.SYNC_FAILED, data=data)
        if ending.account.get("status") == Account.Status.NEEDS_REAUTH:
            deliveries_record(
                account_id=run.account_id,
                type=Webhook.Type.ACCOUNT_NEEDS_REAUTH,
                data={"account": run.account_id, "error": ending.error},
            )


def _publish_later(*, run_id: int, task_id: str, delay: int, mark: bool) -> None:
    """The run's message again, to come back in `delay` seconds."""
    try:
        broker.publish_run(run_id=run_id, task_id=task_id or str(uuid.uuid4()), delay=delay)
    except BROKER_ERRORS:
        # The reaper resends unpublished queued runs, and runs whose worker died.
        if mark:
            states.run_mark_unpublished(run_id=run_id)
        logger.warning("sync run %s: could not publish its delayed message", run_id)


def _execute(run: SyncRun, *, counts: Counts, heartbeat: LeaseHeartbeat) -> Interruption | Ending:
    """Sync the run's account; returns how the run ends, or why it stopped without an end."""
    deadline = time.monotonic() + settings.CALY_SYNC_DEADLINE_SECONDS
    try:
        _sync_account(run, counts=counts, heartbeat=heartbeat, deadline=deadline)
    except HandBack:
        states.run_hand_back(run=run, counts=counts)
        return Interruption.HAND_BACK
    except LeaseLost:
        # Another worker holds the account's lease and is syncing this very run: leave the run
        # to it rather than overwrite its state.
        logger.warning("sync run %s: lease lost; leaving the run to its new holder", run.pk)
        return Interruption.LOST
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
    account = {"last_error": ""}
    if not run.writes_only and run.calendar_id is None:  # the whole account was synced
        account["last_synced_at"] = timezone.now()
    return Ending(SyncRun.State.SUCCEEDED, account=account)


def _checkpoint(*, heartbeat: LeaseHeartbeat, deadline: float) -> None:
    """Between batches (nothing half-written): stop if the lease, the time or the worker is up."""
    if heartbeat.lost:
        raise LeaseLost()
    if lifecycle.should_hand_back():
        raise HandBack()
    if time.monotonic() > deadline:
        raise DeadlineExceeded()


def _retry_or_fail(run: SyncRun, counts: Counts, exc: TransientError) -> Interruption | Ending:
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
        delay = broker.backoff_seconds(attempt=attempts, retry_after=exc.retry_after)
        note = f"{exc} Retrying in {delay} s (attempt {attempts} of {max_attempts} failed)."
        queued = states.run_retry_later(
            run=run, counts=counts, delay=delay, note=note, continuation=continuation
        )
        if queued is run:
            logger.info("sync run %s: %s", run.pk, note)
            return Interruption.RETRY
        if queued is None:  # the follow-up started meanwhile; it syncs the account anyway
            error = f"{exc} A newer sync of the account took over."
        else:
            error = f"{exc} Sync #{queued.pk} tries again in {delay} s."
    return Ending(SyncRun.State.FAILED, error=error, account={"last_error": str(exc)})


def _sync_account(
    run: SyncRun, *, counts: Counts, heartbeat: LeaseHeartbeat, deadline: float
) -> None:
    account = run.account  # read with the run when it was claimed
    provider = provider_for(account)
    # Inside the provider's own loops of requests (continuations, pages) too.
    provider.checkpoint = functools.partial(_checkpoint, heartbeat=heartbeat, deadline=deadline)
    fence = functools.partial(lease_fence, account_id=run.account_id, token=heartbeat.token)
    try:
        # What was changed through Caly goes out first, in the order it was accepted. The claim
        # statement (sql.CLAIM) tells whether there is any; the ORM's claim does not.
        if getattr(run, "pending_writes", True):
            writes_push(
                account_id=account.pk,
                provider=provider,
                checkpoint=provider.checkpoint,
                fence=fence,
            )
        if run.writes_only:
            return
        _sync_calendars(run, provider, counts=counts, heartbeat=heartbeat, deadline=deadline)
    finally:
        provider.close()


def _sync_calendars(
    run: SyncRun, provider: Provider, *, counts: Counts, heartbeat: LeaseHeartbeat, deadline: float
) -> None:
    account = run.account
    if run.calendar_id is not None:
        _sync_one_calendar(run, provider, counts=counts, heartbeat=heartbeat, deadline=deadline)
        return
    stored = list(Calendar.objects.filter(account=account).order_by("pk"))
    # Where each selected calendar's last sync left off, before discovery (CalDAV asks for
    # ctags in its calendar list when some calendar syncs by ctag).
    provider.cursors = {c.remote_id: _cursor(c) for c in stored if c.selected}
    remote = provider.discover()
    if provider.home_url != account.home_url:
        account_home_url_check(home_url=provider.home_url)
        counts.account["home_url"] = provider.home_url
    listed = calendars_reconcile(account=account, remote=remote, stored=stored)
    by_id = {normalize_href(r.remote_id): r for r in remote}
    selected = [each for each in listed if each.calendar.selected]
    counts.calendars_total, counts.calendars_done = len(selected), 0
    # A first sync of a calendar can take minutes: someone watching sees it past discovery
    # ("0/1 calendars") at once. Otherwise the count goes with the first progress recorded (a
    # stored batch, a calendar done), and a sync that finds no change records it with its end.
    if any(each.calendar.last_synced_at is None for each in selected):
        states.run_record_progress(run=run, **counts.calendar_counts())
    for each in selected:
        calendar = each.calendar
        synced_at = calendar.last_synced_at
        _sync_calendar(
            run,
            provider,
            calendar,
            by_id[normalize_href(calendar.remote_id)],
            added=each.added,
            counts=counts,
            heartbeat=heartbeat,
            deadline=deadline,
        )
        counts.calendars_done += 1
        if calendar.last_synced_at == synced_at:  # its cursor did not move
            counts.calendars_unchanged.append(calendar.pk)
        if counts.calendars_done < counts.calendars_total:  # the last one ends the run
            states.run_record_progress(run=run, **counts.calendar_counts())


def _sync_one_calendar(
    run: SyncRun, provider: Provider, *, counts: Counts, heartbeat: LeaseHeartbeat, deadline: float
) -> None:
    """A run for one calendar (a push said it changed): no calendar list, only its changes."""
    calendar = Calendar.objects.filter(pk=run.calendar_id, selected=True).first()
    if calendar is None:  # deselected or removed meanwhile
        return
    remote = RemoteCalendar(
        remote_id=calendar.remote_id,
        name=calendar.name,
        color=calendar.color,
        timezone=calendar.timezone,
        writable=calendar.writable,
    )
    provider.cursors = {calendar.remote_id: _cursor(calendar)}
    counts.calendars_total, counts.calendars_done = 1, 0
    synced_at = calendar.last_synced_at
    _sync_calendar(
        run,
        provider,
        calendar,
        remote,
        added=False,
        counts=counts,
        heartbeat=heartbeat,
        deadline=deadline,
    )
    counts.calendars_done = 1
    if calendar.last_synced_at == synced_at:
        counts.calendars_unchanged.append(calendar.pk)


def _sync_calendar(
    run: SyncRun,
    provider: Provider,
    calendar: Calendar,
    remote: RemoteCalendar,
    *,
    added: bool,
    counts: Counts,
    heartbeat: LeaseHeartbeat,
    deadline: float,
) -> None:
    # A calendar this sync added has no events to read until its first batch is stored.
    nothing_stored = added
    cursor = _cursor(calendar)
    if nothing_stored:
        stored_etags = dict  # nothing to compare with
    else:  # read when the provider first asks, then kept for this sync
        stored_etags = functools.cache(
            functools.partial(selectors.stored_etags, calendar_id=calendar.pk)
        )
    fetching = Fetching(by_listing=calendar.fetch_by_listing, batch=calendar.fetch_batch)
    for batch in provider.changes(
        remote, cursor=cursor, stored_etags=stored_etags, fetching=fetching
    ):
        _checkpoint(heartbeat=heartbeat, deadline=deadline)
        plan = events_apply(
            calendar=calendar,
            batch=batch,
            nothing_stored=nothing_stored,
            fence=functools.partial(lease_fence, account_id=run.account_id, token=heartbeat.token),
        )
        nothing_stored = nothing_stored and not (batch.objects or batch.deleted_hrefs)
        counts.add(created=len(plan.create), updated=len(plan.update), deleted=len(plan.delete_ids))
        counts.events_unrecorded += sum(len(o.events) for o in batch.objects)
        counts.events_unrecorded += len(batch.deleted_hrefs)
        last = batch.cursor is not None and counts.calendars_done + 1 == counts.calendars_total
        progress = {}
        if counts.events_unrecorded and not last:  # an empty batch has no progress to show
            progress = {
                "events_processed": F("events_processed") + counts.events_unrecorded,
                **counts.calendar_counts(),
            }
            if counts.changed:
                progress.update(counts.event_counts())
            counts.events_unrecorded = 0
        if batch.listed or counts.objects_total:  # fetching through a listing
            counts.objects_total += batch.listed
            counts.objects_done += batch.unchanged + len(batch.objects) + len(batch.skipped)
            progress.update(objects_total=counts.objects_total, objects_done=counts.objects_done)
        if progress:
            states.run_record_progress(run=run, **progress)
        if batch.skipped:
            _record_skipped(run, calendar, batch)


def _cursor(calendar: Calendar) -> Cursor:
    return Cursor(
        sync_token=calendar.sync_token,
        ctag=calendar.ctag,
        sync_refused_at=calendar.sync_refused_at,
    )


def _record_skipped(run: SyncRun, calendar: Calendar, batch: ChangeBatch) -> None:
    entries = [
        {"calendar": calendar.name, "href": s.href, "reason": s.reason} for s in batch.skipped
    ]
    states.run_record_skipped(run=run, entries=entries, kept=MAX_SKIPPED_RECORDED)
