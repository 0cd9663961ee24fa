"""A private sync queue with real workers and fake-provider accounts, for queue-behaviour tests.

Each lab gets queues of its own (`<this run's prefix>.<lab>.sync`, ...), so the workers it starts
are the only consumers and the number of slots is exactly what the test says.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connection

from calendars.models import Account
from sync.models import SyncRun
from tests.support.fake_provider import LOG_ENV, fake_url, read_log
from tests.support.polling import wait_for
from tests.support.workers import Worker, start_worker

TERMINAL = ("succeeded", "failed")


@dataclass
class QueueLab:
    prefix: str
    log_path: Path
    settings: object  # pytest-django's `settings` fixture: changes are undone after the test
    worker_env: dict = field(default_factory=dict)
    # A broker of the test's own (tests/support/rabbit_cluster.py) instead of the shared one:
    # where `stop` deletes the lab's queues. Workers get theirs as CELERY_BROKER_URL.
    broker_url: str | None = None
    workers: list[Worker] = field(default_factory=list)

    def configure(self, **values) -> None:
        """Set Caly settings for this test and for the workers it starts (same names)."""
        for name, value in values.items():
            setattr(self.settings, name, value)
            self.worker_env[name] = str(value)

    def env(self, **extra) -> dict:
        own_broker = {"CELERY_BROKER_URL": self.broker_url} if self.broker_url else {}
        return {
            "CALY_QUEUE_PREFIX": self.prefix,
            LOG_ENV: str(self.log_path),
            **own_broker,
            **self.worker_env,
            **{k: str(v) for k, v in extra.items()},
        }

    def start_worker(self, *, threads: int = 1, wait: bool = True, **env) -> Worker:
        worker = start_worker(threads=threads, env=self.env(**env), wait=wait)
        self.workers.append(worker)
        return worker

    def start_workers(self, count: int, *, threads: int = 1, **env) -> list[Worker]:
        """Start several at once (start-up is the slow part), then wait for all."""
        started = [self.start_worker(threads=threads, wait=False, **env) for _ in range(count)]
        for worker in started:
            worker.wait_ready()
        return started

    def provider_log(self) -> list[dict]:
        return read_log(self.log_path)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            if os.environ.get("CALY_TEST_SHOW_WORKER_LOGS"):
                print(f"\n--- worker {worker.name} (pid {worker.pid}) ---\n{worker.log()}")
        from caly.celery import app

        with app.connection_for_write(url=self.broker_url) as conn:
            channel = conn.default_channel
            for name in (f"{self.prefix}.sync", f"{self.prefix}.maintenance"):
                channel.queue_delete(name)
                channel.exchange_delete(name)


@contextlib.contextmanager
def publisher_on(broker_url: str) -> Iterator[None]:
    """Inside the block, this process publishes (as the API and the reaper do) to `broker_url`,
    which may be a `;`-separated failover list; its pooled connections to it are closed after."""
    from caly.celery import app

    # The URL publishers connect to (`broker_url`, which CELERY_BROKER_URL in the environment
    # overrides, is read after it).
    saved = app.conf.get("broker_write_url")
    app.conf.broker_write_url = broker_url
    shared = _swap_publisher_pools(app, None, None)
    try:
        yield
    finally:
        own = _swap_publisher_pools(app, *shared)
        app.conf.broker_write_url = saved
        if own[0] is not None:
            own[0].force_close_all()


def _swap_publisher_pools(app, connections, producers) -> tuple:
    """Put these pools in place of the app's (None: made afresh from the current broker URL)."""
    before = (app._pool, app.amqp._producer_pool)
    app._pool, app.amqp._producer_pool = connections, producers
    return before


def make_fake_accounts(owner, count: int, **behaviour) -> list[Account]:
    """`count` accounts on the fake provider; `behaviour` goes into each URL (see fake_provider)."""
    return [
        Account.objects.create(
            owner=owner,
            provider="fake",
            name=f"Fake {i}",
            url=fake_url(f"acct-{uuid.uuid4().hex[:10]}", **behaviour),
        )
        for i in range(count)
    ]


def wait_all_terminal(run_ids: Iterable[int], *, timeout: float = 60) -> list[SyncRun]:
    run_ids = list(run_ids)

    def done():
        runs = list(SyncRun.objects.filter(pk__in=run_ids))
        finished = [r for r in runs if r.state in TERMINAL]
        return runs if len(finished) == len(run_ids) else None

    return wait_for(done, timeout=timeout, interval=0.1, what=f"{len(run_ids)} runs to finish")


def max_start_displacement(runs: list[SyncRun]) -> int:
    """The largest k such that some request started after a request that arrived k places later.

    Arrival order is the order the runs were requested (their ids, published one by one).
    """
    by_arrival = sorted(runs, key=lambda r: r.pk)
    start_rank = {
        r.pk: rank for rank, r in enumerate(sorted(runs, key=lambda r: (r.started_at, r.pk)))
    }
    worst = 0
    for i, early in enumerate(by_arrival):
        for j in range(i + 1, len(by_arrival)):
            if start_rank[by_arrival[j].pk] < start_rank[early.pk]:
                worst = max(worst, j - i)
    return worst


def db_connections() -> int:
    """Open connections to this test database (PostgreSQL), from every process."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def broker_connections_of(pids: Iterable[int]) -> list[str]:
    """The RabbitMQ connections (their broker-side ids) these processes opened, by local port."""
    pids = {str(p) for p in pids}
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "( dport = :5672 )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ports = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            local = line.split()[2]
            ports.add(local.rsplit(":", 1)[1])
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "peer_port"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for line in listed.splitlines():
        pid, _, port = line.rpartition("\t")
        if port.strip() in ports:
            found.append(pid)
    return found


def close_broker_connections(pids: Iterable[str]) -> None:
    """What `rabbitmqctl close_all_connections` does, limited to our own connections (the
    broker is shared with other test runs)."""
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "Caly test: broker connection lost"],
            capture_output=True,
            check=True,
        )
