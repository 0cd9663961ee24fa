"""The test database as other processes (workers, servers the tests start) use it."""

from __future__ import annotations

from django.db import connection

from caly import polling

# Connections of other processes inside a statement or a transaction.
BUSY = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend' AND state <> 'idle'
"""


def wait_for_other_connections_idle(timeout: float = 20.0) -> bool:
    """Wait until no other connection to the test database is inside a statement or a
    transaction, twice in a row 50 ms apart (a worker between two statements of one run would
    look idle once); say whether that happened before `timeout` (the caller goes on anyway)."""
    if connection.vendor != "postgresql":
        return True
    quiet = []

    def idle() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(BUSY)
            quiet.append(cursor.fetchone()[0] == 0)
        return quiet[-2:] == [True, True]

    try:
        polling.wait_for(idle, timeout=timeout, interval=0.05, what="the workers to be idle")
    except TimeoutError:
        return False
    return True
