"""The few statements written out in SQL, for PostgreSQL: the hot path of every sync.

Each statement does what a short ORM sequence in `sync.states` (or `sync.models`,
`sync.services.store`) also does, and that ORM code is what runs everywhere else (SQLite, and
every uncommon case). They are written out because building and compiling querysets costs a
no-change sync several times the CPU the statements themselves take (bench/RESULTS.md, "queue"),
and preparing rows through model instances a first sync a tenth of its time. Parameters are
named, so each statement reads on its own; nothing here is built at run time.
"""

from __future__ import annotations

from django.db import connection


def in_use() -> bool:
    return connection.vendor == "postgresql"


# Lease expiry is the database's clock (now()), never a worker's (`sync.leases`).

# A run's claim in the common case: the account's lease is free (or the account has none yet:
# its first sync) and the run is queued and due. It takes the lease (the lease row is locked
# first, as everywhere) and marks the run running. No row back: the lease was busy or the run
# not claimable; the caller rolls back whatever the statement did and takes the ORM path of
# `sync.states.run_claim`, which covers every case. With the run comes whether its account has
# writes waiting to go out (`pending_writes`), so that a run with none asks nothing more.
CLAIM = """
    WITH lease AS (
        INSERT INTO sync_synclease AS lease (account_id, holder, run_id, expires_at)
        SELECT account_id, %(holder)s, id, now() + %(ttl)s FROM sync_syncrun WHERE id = %(run)s
        ON CONFLICT (account_id) DO UPDATE
        SET holder = EXCLUDED.holder, run_id = EXCLUDED.run_id, expires_at = EXCLUDED.expires_at
        WHERE lease.holder = '' OR lease.expires_at IS NULL OR lease.expires_at <= now()
        RETURNING account_id
    )
    UPDATE sync_syncrun AS run
    SET state = 'running',
        started_at = COALESCE(run.started_at, %(started_at)s),
        attempts = run.attempts + 1,
        deferred = false,
        retry_at = NULL,
        task_id = CASE WHEN %(task_id)s = '' THEN run.task_id ELSE %(task_id)s END
    FROM lease
    WHERE run.id = %(run)s
      AND run.account_id = lease.account_id
      AND run.state = 'queued'
      AND (run.retry_at IS NULL OR run.retry_at <= %(due_by)s)
    RETURNING run.*, EXISTS (
        SELECT FROM sync_pendingwrite AS write
        WHERE write.account_id = run.account_id AND write.state = 'pending'
    ) AS pending_writes
"""

# The account a claimed run syncs, read with it.
ACCOUNT = "SELECT * FROM calendars_account WHERE id = %s"

# The lease given back at a run's end, if `holder` still holds it (no row: the lease was taken
# over, and the ending writes nothing); the first statement of the ending's transaction, so
# that the lease row is locked before any run.
LEASE_RELEASE = """
    UPDATE sync_synclease SET holder = '', run_id = NULL, expires_at = NULL
    WHERE account_id = %(account)s AND holder = %(holder)s
"""

# The rest of a run's ending, after LEASE_RELEASE: the calendars found unchanged, what the run
# learnt about its account (a NULL parameter keeps the column as it is), the run's final state
# and counts (if it is still running), and the account's deferred queued run made due (handed
# over). Answers whether the
# run was still there, and the handed-over run's id or NULL.
END = """
    WITH unchanged AS (
        UPDATE calendars_calendar SET last_synced_at = %(now)s
        WHERE id = ANY(%(unchanged)s::bigint[])
    ), account AS (
        UPDATE calendars_account
        SET status = COALESCE(%(status)s, status),
            last_error = COALESCE(%(last_error)s, last_error),
            last_synced_at = COALESCE(%(last_synced_at)s, last_synced_at),
            home_url = COALESCE(%(home_url)s, home_url)
        WHERE id = %(account)s
    ), ended AS (
        UPDATE sync_syncrun
        SET state = %(state)s,
            finished_at = %(now)s,
            error = %(error)s,
            events_processed = events_processed + %(events_unrecorded)s,
            calendars_total = %(calendars_total)s,
            calendars_done = %(calendars_done)s,
            created = %(created)s,
            updated = %(updated)s,
            deleted = %(deleted)s
        WHERE id = %(run)s AND state = 'running'
        RETURNING id
    ), handed_over AS (
        UPDATE sync_syncrun SET deferred = false, published_at = NULL
        WHERE account_id = %(account)s AND state = 'queued' AND deferred
        RETURNING id
    )
    SELECT EXISTS (SELECT FROM ended), (SELECT id FROM handed_over)
"""

# A batch's events stored (`sync.services.store.events_apply`): new ones inserted, those stored
# already (same calendar, UID and RECURRENCE-ID) overwritten in the columns a sync writes, as
# bulk_create(update_conflicts=True) does elsewhere; their ids come back in the rows' order.
# Sent by psycopg2's execute_values, EVENT_UPSERT_ROW once for each event in the VALUES list.
EVENT_UPSERT = """
    INSERT INTO calendars_event (
        calendar_id, uid, recurrence_id, href, etag, summary, description, location,
        start, "end", all_day, timezone, status, rrule, rdate, exdate, raw,
        remote_last_modified, sync_state, sync_error, deleting, created_at, updated_at
    ) VALUES %s
    ON CONFLICT (calendar_id, uid, recurrence_id) DO UPDATE SET
        href = EXCLUDED.href, etag = EXCLUDED.etag, summary = EXCLUDED.summary,
        description = EXCLUDED.description, location = EXCLUDED.location,
        start = EXCLUDED.start, "end" = EXCLUDED."end", all_day = EXCLUDED.all_day,
        timezone = EXCLUDED.timezone, status = EXCLUDED.status, rrule = EXCLUDED.rrule,
        rdate = EXCLUDED.rdate, exdate = EXCLUDED.exdate, raw = EXCLUDED.raw,
        remote_last_modified = EXCLUDED.remote_last_modified, updated_at = EXCLUDED.updated_at
    RETURNING id
"""
EVENT_UPSERT_ROW = """(
    %(calendar_id)s, %(uid)s, %(recurrence_id)s, %(href)s, %(etag)s, %(summary)s,
    %(description)s, %(location)s, %(start)s, %(end)s, %(all_day)s, %(timezone)s, %(status)s,
    %(rrule)s, %(rdate)s, %(exdate)s, %(raw)s, %(remote_last_modified)s,
    'synced', '', false, %(now)s, %(now)s
)"""

# Every task's row in the task history (`sync.models.TaskHistoryManager`); bulk_create builds
# the same upsert elsewhere.
TASK_HISTORY_UPSERT = """
    INSERT INTO django_celery_results_taskresult (
        task_id, status, result, traceback, meta, content_encoding, content_type,
        periodic_task_name, task_name, task_args, task_kwargs, worker,
        date_done, date_created, date_started
    ) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (task_id) DO UPDATE SET
        status = EXCLUDED.status, result = EXCLUDED.result, traceback = EXCLUDED.traceback,
        meta = EXCLUDED.meta, content_encoding = EXCLUDED.content_encoding,
        content_type = EXCLUDED.content_type,
        periodic_task_name = EXCLUDED.periodic_task_name, task_name = EXCLUDED.task_name,
        task_args = EXCLUDED.task_args, task_kwargs = EXCLUDED.task_kwargs,
        worker = EXCLUDED.worker, date_done = EXCLUDED.date_done,
        date_started = COALESCE(EXCLUDED.date_started, django_celery_results_taskresult.date_started)
"""
