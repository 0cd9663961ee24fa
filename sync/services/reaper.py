"""The reaper: puts back on the queue what a dead worker or a broker outage left behind."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from sync import states
from sync.models import SyncRun
from sync.services.requests import BrokerUnavailable, sync_publish
from sync.services.webhooks import deliveries_resend

logger = logging.getLogger(__name__)

# A queued run not confirmed by RabbitMQ this long after it was due is sent again (the publish
# right after commit normally takes milliseconds; the margin avoids racing it).
UNPUBLISHED_GRACE = dt.timedelta(seconds=30)


def sync_runs_reap(*, now: dt.datetime | None = None) -> dict:
    """Put back on the queue what a dead worker or a broker outage left behind.

    - `running` runs whose lease lapsed (their worker died): queued again, or failed with a
      readable error once their attempts are used up or a newer run of the account is queued;
    - deferred runs whose account is free (the run that was to hand them back died);
    - queued runs RabbitMQ never confirmed (the broker was away when they were published), and
      runs published over CALY_REPUBLISH_AFTER_SECONDS ago that no worker ever took;
    - webhook deliveries never tried that long after they were recorded.
    Called by the `sync.reap_stale_runs` periodic task; safe to run anywhere, any number of times.
    """
    now = now or timezone.now()
    requeued, failed, freed, republished = [], [], [], []
    running = SyncRun.objects.filter(state=SyncRun.State.RUNNING)
    for run_id, account_id in running.values_list("pk", "account_id"):
        queued_again = states.run_reap(run_id=run_id, account_id=account_id, now=now)
        if queued_again is not None:
            (requeued if queued_again else failed).append(run_id)
    deferred = SyncRun.objects.filter(state=SyncRun.State.QUEUED, deferred=True)
    for run_id, account_id in deferred.values_list("pk", "account_id"):
        if states.run_free_deferred(run_id=run_id, account_id=account_id, now=now):
            freed.append(run_id)
    # Published long ago and never taken: its message was lost (a claim that raised, a queue
    # that was deleted). Sent again; a second message of a run that did start finds it so.
    stale = now - dt.timedelta(seconds=settings.CALY_REPUBLISH_AFTER_SECONDS)
    SyncRun.objects.filter(
        Q(retry_at=None) | Q(retry_at__lt=stale),
        state=SyncRun.State.QUEUED,
        deferred=False,
        published_at__lt=stale,
    ).update(published_at=None)
    due = Q(retry_at=None, requested_at__lt=now - UNPUBLISHED_GRACE) | Q(
        retry_at__lt=now - UNPUBLISHED_GRACE
    )
    unpublished = SyncRun.objects.filter(
        due, state=SyncRun.State.QUEUED, deferred=False, published_at=None
    )
    # Requeued and freed runs are published even within the grace: nobody else will.
    now_due = requeued + freed
    to_publish = list(SyncRun.objects.filter(pk__in=now_due)) + list(
        unpublished.exclude(pk__in=now_due)
    )
    for run in to_publish:
        try:
            sync_publish(run=run)
        except BrokerUnavailable:
            break  # still away; the next tick tries again
        republished.append(run.pk)
    summary = {"requeued": requeued, "failed": failed, "published": republished}
    # Webhook deliveries whose publish after commit was lost to a broker outage.
    resent = deliveries_resend(
        older_than=dt.timedelta(seconds=settings.CALY_REPUBLISH_AFTER_SECONDS)
    )
    if resent:
        summary["webhook_deliveries"] = resent
    if any(summary.values()):
        logger.warning("reaper: %s", summary)
    return summary
