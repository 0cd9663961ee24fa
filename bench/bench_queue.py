"""The sync queue under load, on the real broker: bare Celery vs Caly, start latency, start order.

`make bench BENCH=queue` (bench/run.py gives it a database and queues of its own). W worker
processes x T threads (CALY_WORKER_PROCESSES x CALY_WORKER_THREADS, 2 x 8 by default) consume
the sync queue; accounts use the fake provider of the test suite. Figures:

- noop_tasks_per_s: a Celery task that does nothing, same queue, same worker settings (the
  bare baseline); caly_runs_per_s: no-change syncs with a zero-latency provider; their ratio.
- history_only_tasks_per_s: a task that does nothing but keep its result in the task history
  (django-celery-results, as every sync task does): the most a sync could reach here, and its
  ratio to the baseline.
- request_to_start_p50/p95_ms: at half the measured capacity, from the request to the start.
- max_displacement_*: the most places a request started behind a later one (promise: <= C-1).
- fleet_*: 200 accounts behind a provider taking 100 ms a request; wall time / ideal, where
  ideal = requests x latency / slots. Chart: bench/out/queue_start_order.png.
- fleet_ceiling_wall_over_ideal: the same fleet as tasks that only wait 200 ms and keep their
  result in the task history: what the queue and the machine allow before any sync work.
- cpu_ms_per_run_workers / _machine: CPU per no-change run in the worker processes, and on the
  whole machine (PostgreSQL, RabbitMQ, the kernel too); machine_cpu_busy_share: how busy all
  cores were meanwhile (1.0: the machine was the limit).
- db_connections_peak: connections to the benchmark database while thousands of runs went by.

Backlogs are published while the workers are idle on another queue, then the workers are told
to consume (Celery remote control), so each throughput is measured with every slot present.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import report, setup_django  # noqa: E402

REGISTRATION = "fake=tests.support.fake_provider:FakeProvider"
os.environ["CALY_EXTRA_PROVIDERS"] = REGISTRATION
setup_django()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402

from bench.queue_tasks import FLEET_WAIT_S, history_only, noop, wait_history  # noqa: E402
from caly.celery import app  # noqa: E402
from sync.broker import sync_queue  # noqa: E402
from sync.models import SyncRun  # noqa: E402
from sync.services import sync_request_account  # noqa: E402
from tests.support.queue_lab import make_fake_accounts, max_start_displacement  # noqa: E402
from tests.support.workers import start_worker  # noqa: E402

W = settings.CALY_WORKER_PROCESSES
T = settings.CALY_WORKER_THREADS
SLOTS = W * T
N_NOOP = int(os.environ.get("BENCH_NOOP_TASKS", 4000))
N_HISTORY = int(os.environ.get("BENCH_HISTORY_TASKS", 2000))
N_RUNS = int(os.environ.get("BENCH_SYNC_RUNS", 2000))
N_LATENCY = int(os.environ.get("BENCH_LATENCY_RUNS", 600))
FLEET, FLEET_LATENCY, FLEET_REQUESTS_PER_SYNC = 200, 0.1, 2  # discovery + one batch
OUT = ROOT / "bench" / "out"
IDLE_QUEUE = f"{settings.CALY_QUEUE_PREFIX}.idle"


class Fleet:
    """W worker processes, idle on a queue of their own until told to consume the sync queue."""

    def __init__(self):
        env = {"CALY_EXTRA_PROVIDERS": REGISTRATION, "CALY_LOG_LEVEL": "WARNING"}
        args = ["--include", "bench.queue_tasks"]
        self.workers = [
            start_worker(threads=T, env=env, queues=IDLE_QUEUE, args=args, wait=False)
            for _ in range(W)
        ]
        for worker in self.workers:
            worker.wait_ready()

    def consume(self, on: bool) -> None:
        command = app.control.add_consumer if on else app.control.cancel_consumer
        names = [w.name for w in self.workers]
        replies = command(settings.CALY_SYNC_QUEUE, destination=names, reply=True, timeout=10)
        assert len(replies) == len(names), replies

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


class Depth:
    """Messages ready in the sync queue (a passive declare on a connection kept open)."""

    def __init__(self):
        self.conn = app.connection_for_write()
        self.channel = self.conn.default_channel

    def __call__(self) -> int:
        return self.channel.queue_declare(settings.CALY_SYNC_QUEUE, passive=True).message_count

    def drain_seconds(self, total: int) -> float:
        """From the first message taken to an empty queue (polled every 2 ms)."""
        while self() >= total:
            time.sleep(0.002)
        start = time.perf_counter()
        while self() > 0:
            time.sleep(0.002)
        return time.perf_counter() - start


class ConnectionPeak(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._halt = 0, threading.Event()

    def run(self):
        try:
            while not self._halt.wait(0.05):
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    )
                    self.peak = max(self.peak, cursor.fetchone()[0])
        finally:
            connection.close()

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def cpu_seconds(pids) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far, all cores (Linux /proc/stat).

    The workers' own CPU is read per process; PostgreSQL's server processes and the kernel's
    share are only visible here, so the difference is the cost of a run outside the worker.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def request_all(accounts) -> list[int]:
    return [sync_request_account(account=a, trigger=SyncRun.Trigger.API).pk for a in accounts]


def wait_terminal(run_ids: list[int], timeout: float = 600) -> list[SyncRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = SyncRun.objects.filter(pk__in=run_ids, state__in=["queued", "running"]).count()
        if not pending:
            return list(SyncRun.objects.filter(pk__in=run_ids))
        time.sleep(0.05)
    raise RuntimeError(f"{pending} runs did not finish in {timeout}s")


def wait_results(task_name: str, count: int, timeout: float = 600) -> float:
    """When the last of `count` results of `task_name` was stored (a Unix time)."""
    from django_celery_results.models import TaskResult

    results = TaskResult.objects.filter(task_name=task_name)
    deadline = time.monotonic() + timeout
    while results.count() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{task_name}: fewer than {count} results in {timeout}s")
        time.sleep(0.05)
    return max(r.date_done for r in results).timestamp()


def publish(task, count: int) -> None:
    queue = sync_queue()
    with app.producer_or_acquire() as producer:
        for i in range(count):
            task.apply_async(
                args=[i],
                producer=producer,
                queue=queue,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue] if i == 0 else None,
            )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def chart(runs: list[SyncRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_request = sorted(runs, key=lambda r: r.pk)
    start_rank = {r.pk: i for i, r in enumerate(sorted(runs, key=lambda r: (r.started_at, r.pk)))}
    x = list(range(len(by_request)))
    y = [start_rank[r.pk] for r in by_request]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    ax.fill_between(
        x,
        [i - (SLOTS - 1) for i in x],
        [i + (SLOTS - 1) for i in x],
        color="tab:green",
        alpha=0.15,
        label=f"promise: within C-1 = {SLOTS - 1} places",
    )
    ax.plot(x, x, color="tab:green", linewidth=0.8, label="exact arrival order")
    ax.scatter(x, y, s=8, color="tab:blue", label="sync run")
    ax.set_xlabel("request position (arrival order)")
    ax.set_ylabel("start position")
    ax.set_title(f"Start order of {len(runs)} syncs (100 ms/request), {W} x {T} slots")
    ax.legend(loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    owner = get_user_model().objects.create_user("bench", password="bench-password-1")
    figures: dict = {"worker_processes": W, "threads_per_process": T, "slots": SLOTS}
    figures["load_average_at_start"] = round(os.getloadavg()[0], 2)
    peak = ConnectionPeak()
    peak.start()
    fleet = Fleet()
    depth = Depth()
    try:
        # 1. The bare baseline: a no-op task through the same queue and worker settings; then
        #    the ceiling for a sync task: one that only keeps its result in the task history.
        for task, count, name in (
            (noop, N_NOOP, "noop"),
            (history_only, N_HISTORY, "history_only"),
        ):
            publish(task, count)
            fleet.consume(True)
            figures[f"{name}_tasks_per_s"] = count / depth.drain_seconds(count)
            fleet.consume(False)
        figures["history_only_to_noop_ratio"] = (
            figures["history_only_tasks_per_s"] / figures["noop_tasks_per_s"]
        )

        # 2. Caly no-change syncs, zero latency: a first round stores the calendars, the
        #    measured second round finds nothing to change.
        accounts = make_fake_accounts(owner, N_RUNS, events=2)
        warm = request_all(accounts)
        fleet.consume(True)
        wait_terminal(warm)
        fleet.consume(False)
        run_ids = request_all(accounts)
        workers_cpu, machine_cpu = cpu_seconds(fleet.pids()), machine_cpu_seconds()
        window = time.perf_counter()
        fleet.consume(True)
        caly_seconds = depth.drain_seconds(N_RUNS)
        runs = wait_terminal(run_ids)
        workers_cpu = cpu_seconds(fleet.pids()) - workers_cpu
        machine_cpu = machine_cpu_seconds() - machine_cpu
        window = time.perf_counter() - window
        assert {r.state for r in runs} == {"succeeded"}, "some benchmark syncs failed"
        assert sum(r.created + r.updated + r.deleted for r in runs) == 0
        figures["caly_runs_per_s"] = N_RUNS / caly_seconds
        span = max(r.finished_at for r in runs) - min(r.started_at for r in runs)
        figures["caly_runs_per_s_first_start_to_last_finish"] = N_RUNS / span.total_seconds()
        figures["caly_to_noop_ratio"] = figures["caly_runs_per_s"] / figures["noop_tasks_per_s"]
        figures["max_displacement_no_change_runs"] = max_start_displacement(runs)
        figures["cpu_ms_per_run_workers"] = workers_cpu / N_RUNS * 1000
        figures["machine_cpu_busy_share"] = machine_cpu / (window * (os.cpu_count() or 1))
        # From the slot taking the message to the run's end, with every slot busy.
        busy = [(r.finished_at - r.started_at).total_seconds() * 1000 for r in runs]
        figures["no_change_run_duration_p50_ms"] = percentile(busy, 50)
        figures["no_change_run_duration_p95_ms"] = percentile(busy, 95)
        figures["cpu_ms_per_run_machine"] = machine_cpu / N_RUNS * 1000

        # 3. Request -> start latency at half the measured capacity (consumers on).
        rate = figures["caly_runs_per_s"] / 2
        latency_accounts = accounts[:N_LATENCY]
        latency_ids = []
        started = time.perf_counter()
        for i, account in enumerate(latency_accounts):
            pause = started + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            latency_ids.append(sync_request_account(account=account, trigger="api").pk)
        latency_runs = wait_terminal(latency_ids)
        waits = [(r.started_at - r.requested_at).total_seconds() * 1000 for r in latency_runs]
        figures["latency_request_rate_per_s"] = rate
        figures["request_to_start_p50_ms"] = percentile(waits, 50)
        figures["request_to_start_p95_ms"] = percentile(waits, 95)
        figures["max_displacement_paced"] = max_start_displacement(latency_runs)

        # 4. A fleet of 200 accounts behind a provider that takes 100 ms per request.
        #    All 200 requested at once (as a resync tick or a busy minute does), then consumed.
        fleet_accounts = make_fake_accounts(owner, FLEET, delay=FLEET_LATENCY, batches=1, events=5)
        fleet.consume(False)
        fleet_ids = request_all(fleet_accounts)
        consuming_from = time.time()
        fleet.consume(True)
        fleet_runs = wait_terminal(fleet_ids)
        assert {r.state for r in fleet_runs} == {"succeeded"}, "some fleet syncs failed"
        wall = max(r.finished_at for r in fleet_runs).timestamp() - consuming_from
        ideal = FLEET * FLEET_REQUESTS_PER_SYNC * FLEET_LATENCY / SLOTS
        fleet_waits = [r.started_at.timestamp() - consuming_from for r in fleet_runs]
        figures["fleet_wall_s"] = wall
        figures["fleet_ideal_s"] = ideal
        figures["fleet_wall_over_ideal"] = wall / ideal
        figures["fleet_consume_to_start_p50_s"] = percentile(fleet_waits, 50)
        figures["fleet_consume_to_start_p95_s"] = percentile(fleet_waits, 95)
        figures["max_displacement_fleet"] = max_start_displacement(fleet_runs)
        # Provider time per sync is 0.2 s; the rest of a run's duration is Caly and waiting.
        durations = [(r.finished_at - r.started_at).total_seconds() for r in fleet_runs]
        figures["fleet_run_duration_p50_s"] = percentile(durations, 50)
        figures["fleet_run_duration_p95_s"] = percentile(durations, 95)
        chart(fleet_runs, OUT / "queue_start_order.png")

        # 5. The fleet's ceiling: the same 200 as tasks that wait what a sync's provider takes
        #    and keep their result, as a sync does; nothing else.
        assert FLEET_WAIT_S == FLEET_REQUESTS_PER_SYNC * FLEET_LATENCY
        fleet.consume(False)
        publish(wait_history, FLEET)
        consuming_from = time.time()
        fleet.consume(True)
        done = wait_results("bench.wait_history", FLEET)
        figures["fleet_ceiling_wall_over_ideal"] = (done - consuming_from) / ideal
        figures["fleet_to_ceiling_ratio"] = (
            figures["fleet_wall_over_ideal"] / figures["fleet_ceiling_wall_over_ideal"]
        )
        figures["chart"] = "bench/out/queue_start_order.png"

        figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
        figures["runs_total"] = SyncRun.objects.count()
        figures["db_connections_peak"] = peak.stop()
        figures["db_connections_bound"] = f"slots + processes + 2 = {SLOTS + W + 2}"
    finally:
        fleet.stop()
        with app.connection_for_write() as conn:
            for name in (settings.CALY_SYNC_QUEUE, settings.CALY_MAINTENANCE_QUEUE, IDLE_QUEUE):
                conn.default_channel.queue_delete(name)
                conn.default_channel.exchange_delete(name)
    report("queue", figures)


if __name__ == "__main__":
    main()
