"""The per-account sync lease: one sync of an account at a time, safe against dead workers.

No transaction stays open across HTTP calls: taking, renewing and releasing the lease are each a
short locked statement, and a lease whose holder stopped renewing it simply lapses.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from sync.models import SyncLease, SyncRun

logger = logging.getLogger(__name__)


def _ttl() -> dt.timedelta:
    return dt.timedelta(seconds=settings.CALY_LEASE_SECONDS)


@transaction.atomic
def lease_acquire_or_defer(*, run: SyncRun, task_id: str = "") -> str | None:
    """Take the account's lease and mark the run running; or, if another sync holds it, defer.

    Returns the lease token, or None when the run was deferred (its message is handed back by
    the holder on release, or by the reaper if the holder died).
    """
    now = timezone.now()
    SyncLease.objects.get_or_create(account_id=run.account_id)
    lease = SyncLease.objects.select_for_update().get(account_id=run.account_id)
    run.refresh_from_db()
    if run.state in SyncRun.TERMINAL_STATES:
        return None
    if lease.holder and lease.expires_at and lease.expires_at > now:
        SyncRun.objects.filter(pk=run.pk).update(deferred=True)
        return None
    token = f"{run.pk}:{uuid.uuid4().hex}"
    lease.holder, lease.expires_at = token, now + _ttl()
    lease.save(update_fields=["holder", "expires_at"])
    run.state = SyncRun.State.RUNNING
    run.started_at = now
    run.attempts += 1
    run.deferred = False
    if task_id:
        run.task_id = task_id
    run.save(update_fields=["state", "started_at", "attempts", "deferred", "task_id"])
    return token


@transaction.atomic
def lease_release(*, account_id: int, token: str) -> SyncRun | None:
    """Give the lease back; returns a deferred queued run of the account that is now due."""
    lease = SyncLease.objects.select_for_update().filter(account_id=account_id).first()
    if lease is not None and lease.holder == token:
        lease.holder, lease.expires_at = "", None
        lease.save(update_fields=["holder", "expires_at"])
    waiting = (
        SyncRun.objects.select_for_update()
        .filter(account_id=account_id, state=SyncRun.State.QUEUED, deferred=True)
        .first()
    )
    if waiting is not None:
        waiting.deferred = False
        waiting.save(update_fields=["deferred"])
    return waiting


def lease_renew(*, account_id: int, token: str) -> bool:
    return bool(
        SyncLease.objects.filter(account_id=account_id, holder=token).update(
            expires_at=timezone.now() + _ttl()
        )
    )


class LeaseHeartbeat:
    """Renews a lease in the background while a long sync runs; notices if it was lost."""

    def __init__(self, *, account_id: int, token: str):
        self.account_id, self.token = account_id, token
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{account_id}", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(settings.CALY_LEASE_SECONDS / 3, 0.5)
        try:
            while not self._stop.wait(interval):
                try:
                    if not lease_renew(account_id=self.account_id, token=self.token):
                        self.lost = True
                        logger.warning("lease on account %s was lost", self.account_id)
                        return
                except Exception:
                    logger.exception("renewing the lease on account %s failed", self.account_id)
                    close_old_connections()
        finally:
            connection.close()
