"""The sync service, one module a job: `accounts` (connecting them), `requests` (queueing and
publishing syncs, the periodic resync), `runs` (running one sync), `store` (storing what a sync
brought), `writes` (events changed through Caly, written back), `webhooks` (notifying apps) and
`reaper` (what dead workers and broker outages left behind).

The names below are the service's API for views, tasks and commands.
"""

from sync.services.accounts import (
    AccountRefused,
    account_connect,
    account_update,
    calendars_reconcile,
)
from sync.services.push import channels_maintain, channels_stop_for_account
from sync.services.reaper import sync_runs_reap
from sync.services.requests import (
    AccountNotSyncable,
    BrokerUnavailable,
    resync_batch_size,
    sync_publish,
    sync_request,
    sync_request_account,
    sync_request_stale,
)
from sync.services.runs import RunResult, sync_run_execute
from sync.services.store import event_changes_prune, events_apply
from sync.services.webhooks import delivery_send, webhook_create

__all__ = [
    "AccountNotSyncable",
    "AccountRefused",
    "BrokerUnavailable",
    "RunResult",
    "account_connect",
    "account_update",
    "calendars_reconcile",
    "channels_maintain",
    "channels_stop_for_account",
    "delivery_send",
    "event_changes_prune",
    "events_apply",
    "resync_batch_size",
    "sync_publish",
    "sync_request",
    "sync_request_account",
    "sync_request_stale",
    "sync_run_execute",
    "sync_runs_reap",
    "webhook_create",
]
