"""The per-account sync lease: one sync of an account at a time, safe against dead workers.

No transaction stays open across HTTP calls: claiming, renewing and releasing the lease are each
a short locked statement, and a lease whose holder stopped renewing it simply lapses. Locks are
always taken lease first, then runs, so claims, releases and the reaper cannot deadlock.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from caly.rows import Update, ValueOf, read_row, read_values, update_rows, write_together
from sync.models import SyncLease, SyncRun

logger = logging.getLogger(__name__)


def _ttl() -> dt.timedelta:
    return dt.timedelta(seconds=settings.CALY_LEASE_SECONDS)


def lease_token(*, run_id: int, worker: str = "") -> str:
    """A lease holder names the run it syncs (and the worker, for people reading the admin)."""
    return f"{run_id}:{worker or '?'}:{uuid.uuid4().hex[:12]}"


def token_run_id(holder: str) -> int | None:
    head = holder.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def lease_alive(lease: SyncLease | None, now: dt.datetime | None = None) -> bool:
    now = now or timezone.now()
    return bool(lease and lease.holder and lease.expires_at and lease.expires_at > now)


def lease_lock(account_id: int) -> SyncLease:
    """The account's lease row, locked until the transaction ends (created if missing)."""
    lease = read_row(SyncLease, {"account_id": account_id}, lock=True)
    if lease is None:  # the account's first sync
        SyncLease.objects.get_or_create(account_id=account_id)
        lease = read_row(SyncLease, {"account_id": account_id}, lock=True)
    return lease


@dataclass
class Claim:
    """What a worker should do with the message of a run it just received."""

    # acquired: sync it now; deferred: the account's current sync hands it back when done;
    # done: nothing left to do (finished, gone, or given up); later: publish it again in
    # `delay` seconds (a retry that came back early, or its previous worker may still live).
    outcome: str
    run: SyncRun | None = None
    token: str = ""
    delay: int = 0


@transaction.atomic
def run_claim(
    *, run_id: int, task_id: str = "", worker: str = "", received_at: dt.datetime | None = None
) -> Claim:
    """Take the account's lease and mark the run running; or say why not.

    `received_at` is when the worker slot took the message: the run's start, as far as the
    start-order promise goes (the claim itself may wait for the database).
    """
    now = timezone.now()
    lease_of_run = {"account_id": ValueOf(SyncRun, "account_id", run_id)}
    lease = read_row(SyncLease, lease_of_run, lock=True)
    if lease is None:  # the account's first sync, or the run is gone
        lease = _lease_add_for_run(run_id) or read_row(SyncLease, lease_of_run, lock=True)
        if lease is None:
            return Claim("done")
    # The account comes along: the sync needs it next.
    run = read_row(SyncRun, {"pk": run_id}, related=("account",), lock=True)
    if run is None or run.state in SyncRun.TERMINAL_STATES:
        return Claim("done", run)
    alive = lease_alive(lease, now)
    if run.state == SyncRun.State.RUNNING:
        if alive and token_run_id(lease.holder) == run.pk:
            # A second delivery while the first may still be syncing (a broker connection was
            # lost): look again once the lease would have lapsed.
            return Claim("later", run, delay=_seconds_until(lease.expires_at, now) + 1)
        if not run_recover_interrupted(run=run, now=now):
            return Claim("done", run)
    if run.retry_at and run.retry_at > now + dt.timedelta(seconds=0.5):
        return Claim("later", run, delay=_seconds_until(run.retry_at, now))
    if alive:
        if not run.deferred:
            run.deferred = True
            run.save(update_fields=["deferred"])
        return Claim("deferred", run)
    token = lease_token(run_id=run.pk, worker=worker)
    lease.holder, lease.expires_at = token, now + _ttl()
    run.state = SyncRun.State.RUNNING
    # The first start is the one the order promise is about.
    run.started_at = run.started_at or min(received_at or now, now)
    run.attempts += 1
    run.deferred = False
    run.retry_at = None
    if task_id:
        run.task_id = task_id
    fields = ("state", "started_at", "attempts", "deferred", "retry_at", "task_id")
    write_together(
        Update(SyncLease, {"pk": lease.pk}, {"holder": token, "expires_at": lease.expires_at}),
        Update(SyncRun, {"pk": run.pk}, {name: getattr(run, name) for name in fields}),
    )
    return Claim("acquired", run, token=token)


def _lease_add_for_run(run_id: int) -> SyncLease | None:
    """Add a free lease row for the run's account unless it has one: a single statement.

    Returns the new row, which this transaction holds locked until it ends; None if nothing was
    added (the run is gone, or a concurrent claim added the row first: read it then). Free means
    the model's defaults: no holder, no expiry. PostgreSQL and SQLite both take INSERT ...
    SELECT ... ON CONFLICT ... RETURNING (the ORM would read the run's account first).
    """
    quote = connection.ops.quote_name
    lease, run = SyncLease._meta, SyncRun._meta
    account = quote(lease.get_field("account").column)
    holder, expires_at = (quote(lease.get_field(n).column) for n in ("holder", "expires_at"))
    returning = connection.features.can_return_columns_from_insert
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(lease.db_table)} ({account}, {holder}, {expires_at}) "
            f"SELECT {quote(run.get_field('account').column)}, %s, NULL "
            f"FROM {quote(run.db_table)} WHERE {quote(run.pk.column)} = %s "
            "ON CONFLICT DO NOTHING" + (f" RETURNING {account}" if returning else ""),
            ["", run_id],
        )
        added = cursor.fetchone() if returning else None
    return SyncLease.from_db(connection.alias, None, (added[0], "", None)) if added else None


def run_recover_interrupted(*, run: SyncRun, now: dt.datetime) -> bool:
    """A `running` run whose worker died or handed it back: queue it again, or end it.

    Call with the account's lease and the run locked. Returns True if the run is queued again
    (its caller then delivers it), False if it was ended.
    """
    max_attempts = settings.CALY_SYNC_MAX_ATTEMPTS
    sibling = next(
        (
            pk
            for (pk,) in read_values(
                SyncRun, {"account_id": run.account_id, "state": SyncRun.State.QUEUED}, ("pk",)
            )
            if pk != run.pk
        ),
        None,
    )
    if run.attempts >= max_attempts:
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


def _seconds_until(when: dt.datetime, now: dt.datetime) -> int:
    return max(1, math.ceil((when - now).total_seconds()))


def lease_release(*, account_id: int, token: str) -> Update:
    """The update that gives the lease back if `token` still holds it (another worker may have
    taken it over), for `caly.rows.write_together`.

    Make it first in the transaction that ends a run: the lease row is locked before any run.
    """
    return Update(
        SyncLease, {"account_id": account_id, "holder": token}, {"holder": "", "expires_at": None}
    )


def lease_hand_over(*, account_id: int) -> SyncRun | None:
    """After `lease_release`: a deferred queued run of the account, now due.

    The caller publishes that run; until RabbitMQ confirms, it counts as unpublished, so the
    reaper sends it if the caller cannot.
    """
    # An account has at most one queued run. The update locks it; most syncs find none, and
    # then this is the only statement. A claim of that run meanwhile finds the lease free and
    # takes the run: then there is nothing to hand over.
    queued = {"account_id": account_id, "state": SyncRun.State.QUEUED}
    if not update_rows(
        SyncRun, {**queued, "deferred": True}, {"deferred": False, "published_at": None}
    ):
        return None
    return read_row(SyncRun, queued)


def lease_renew(*, tokens: list[str]) -> set[str]:
    """Extend the given leases; returns the tokens that are no longer held (taken over)."""
    if not tokens:
        return set()
    renewed = update_rows(
        SyncLease, {"holder__in": tokens}, {"expires_at": timezone.now() + _ttl()}
    )
    if renewed == len(set(tokens)):  # tokens are unique: every one is still held
        return set()
    held = set(SyncLease.objects.filter(holder__in=tokens).values_list("holder", flat=True))
    return set(tokens) - held


class _LeaseKeeper:
    """One thread per process renews every lease the process holds, in one statement.

    One thread and one database connection however many syncs run at once: the connection
    count of a worker stays at its slots plus one.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, LeaseHeartbeat] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, heartbeat: LeaseHeartbeat) -> None:
        with self._lock:
            self._held[heartbeat.token] = heartbeat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def remove(self, heartbeat: LeaseHeartbeat) -> None:
        with self._lock:
            self._held.pop(heartbeat.token, None)

    def _run(self) -> None:
        interval = max(settings.CALY_LEASE_SECONDS / 3, 0.5)
        while True:
            self._wake.wait(interval)
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                lost = lease_renew(tokens=list(held))
            except Exception:
                logger.exception("renewing %s sync leases failed", len(held))
                close_old_connections()
                continue
            finally:
                connection.close()
            with self._lock:
                # A sync that ended meanwhile released its lease: that is not a loss.
                lost = [self._held[token] for token in lost if token in self._held]
            for heartbeat in lost:
                heartbeat.lost = True
                logger.warning("the sync lease on account %s was lost", heartbeat.account_id)


_keeper = _LeaseKeeper()


class LeaseHeartbeat:
    """Keeps a lease renewed while a sync runs; `lost` turns true if another worker took it."""

    def __init__(self, *, account_id: int, token: str):
        self.account_id, self.token = account_id, token
        self.lost = False

    def __enter__(self) -> LeaseHeartbeat:
        _keeper.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _keeper.remove(self)
