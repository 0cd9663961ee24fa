"""The per-account sync lease: one sync of an account at a time, safe against dead workers.

No transaction stays open across HTTP calls: taking, renewing and releasing the lease are each
a short locked statement, and a lease whose holder stopped renewing it simply lapses. Locks are
always taken lease first, then runs, so claims, endings and the reaper cannot deadlock. What a
run does with the lease (claim, ending) is in `sync.states`.

Expiry is the database's clock, never a worker's: a lease is written as "now() + TTL" and
compared with now() of the same server. Every batch a sync writes is fenced by its lease
(`lease_fence`): a worker whose lease lapsed or was taken over writes nothing more.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now

from sync.models import SyncLease, SyncRun
from sync.providers.base import ProviderError

logger = logging.getLogger(__name__)


def lease_ttl() -> dt.timedelta:
    return dt.timedelta(seconds=settings.CALY_LEASE_SECONDS)


def _expiry():
    """The database's now() plus the lease's TTL, for an update to write."""
    return ExpressionWrapper(Now() + lease_ttl(), output_field=DateTimeField())


class LeaseLost(ProviderError):
    def __init__(self):
        super().__init__("Another worker took over this account's sync; stopped to avoid a clash.")


def lease_token(*, run_id: int, worker: str = "") -> str:
    """A lease holder names the run it syncs (and the worker, for people reading the admin)."""
    return f"{run_id}:{worker or '?'}:{uuid.uuid4().hex[:12]}"


def locked_leases():
    """Lease rows locked until the transaction ends, each with `db_now`, the database's clock."""
    return SyncLease.objects.select_for_update().annotate(db_now=Now())


def lease_alive(lease: SyncLease | None) -> bool:
    """Whether a lease read by `locked_leases` is held and not yet expired (database clock)."""
    return bool(lease and lease.holder and lease.expires_at and lease.expires_at > lease.db_now)


def lease_lock(*, account_id: int) -> SyncLease:
    """The account's lease row, locked until the transaction ends (added if missing).

    Call inside `transaction.atomic()`, before locking any run of the account: lease first,
    then runs, everywhere.
    """
    lease = locked_leases().filter(account_id=account_id).first()
    if lease is None:  # the account's first sync; a concurrent one may add the row first
        SyncLease.objects.bulk_create([SyncLease(account_id=account_id)], ignore_conflicts=True)
        lease = locked_leases().get(account_id=account_id)
    return lease


def lease_take(*, lease: SyncLease, run: SyncRun, worker: str) -> str:
    """Make `run` the holder of the locked `lease`; returns the holder's token."""
    lease.holder = lease_token(run_id=run.pk, worker=worker)
    lease.run = run
    lease.expires_at = lease.db_now + lease_ttl()
    lease.save(update_fields=["holder", "run", "expires_at"])
    return lease.holder


def lease_fence(*, account_id: int, token: str) -> None:
    """First in a transaction that writes what a sync fetched: go on only while `token` holds
    the account's lease, unexpired (and renew it); raises LeaseLost otherwise.

    The update locks the lease row until the transaction ends, so the lease cannot be taken
    over while the batch is written.
    """
    if not _held([token]).filter(account_id=account_id).update(expires_at=_expiry()):
        raise LeaseLost()


def _held(tokens: list[str]):
    """The leases these tokens hold and that have not lapsed: a lapsed lease is lost for good,
    even before another worker takes it."""
    return SyncLease.objects.filter(holder__in=tokens, expires_at__gt=Now())


def lease_release(*, account_id: int, token: str) -> bool:
    """Give the lease back if `token` still holds it; False if another worker took it over.

    In the transaction that ends a run, release first: the lease row is locked before any run.
    """
    return bool(
        SyncLease.objects.filter(account_id=account_id, holder=token).update(
            holder="", run=None, expires_at=None
        )
    )


def lease_renew(*, tokens: list[str]) -> set[str]:
    """Extend the given leases; returns the tokens that are no longer held (taken over)."""
    if not tokens:
        return set()
    held = _held(tokens)
    if held.update(expires_at=_expiry()) == len(set(tokens)):
        return set()  # tokens are unique: every one is still held
    return set(tokens) - set(held.values_list("holder", flat=True))


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
        while True:
            self._wake.wait(max(settings.CALY_LEASE_SECONDS / 3, 0.5))
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            attempted = time.monotonic()
            try:
                lost = lease_renew(tokens=list(held))
            except Exception:
                logger.exception("renewing %s sync leases failed", len(held))
                close_old_connections()
                # Not renewed for longer than a lease lasts: it has lapsed, so it is lost.
                ttl = settings.CALY_LEASE_SECONDS
                lost = [t for t, beat in held.items() if attempted - beat.renewed_at > ttl]
            else:
                for token in set(held) - lost:
                    held[token].renewed_at = attempted
            finally:
                connection.close()
            with self._lock:
                # A sync that ended meanwhile released its lease: that is not a loss.
                lost = [self._held[token] for token in lost if token in self._held]
            for heartbeat in lost:
                if not heartbeat.lost:
                    logger.warning("the sync lease on account %s was lost", heartbeat.account_id)
                heartbeat.lost = True


_keeper = _LeaseKeeper()


class LeaseHeartbeat:
    """Keeps a lease renewed while a sync runs; `lost` turns true if another worker took it."""

    def __init__(self, *, account_id: int, token: str):
        self.account_id, self.token = account_id, token
        self.lost = False
        self.renewed_at = time.monotonic()  # the claim took the lease just now

    def __enter__(self) -> LeaseHeartbeat:
        _keeper.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _keeper.remove(self)
