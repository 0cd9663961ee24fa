"""The test database as other processes (workers, servers the tests start) use it."""

from __future__ import annotations

from django.db import connection

from caly import polling

# Connections of other processes inside a statement or a transaction, and runs a worker holds.
BUSY = """
    SELECT (SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND backend_type = 'client backend' AND state <> 'idle')
         + (SELECT count(*) FROM sync_syncrun WHERE state = 'running')
"""


def wait_for_other_connections_idle(timeout: float = 20.0) -> bool:
    """Wait until no run is running and no other connection to the test database is inside a
    statement or a transaction; say whether that happened before `timeout` (the caller goes on either way)."""
    if connection.vendor != "postgresql":
        return True

    def idle() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(BUSY)
            return cursor.fetchone()[0] == 0

    try:
        polling.wait_for(idle, timeout=timeout, interval=0.05, what="the workers to be idle")
    except TimeoutError:
        return False
    return True
