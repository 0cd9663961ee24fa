"""Real Celery worker processes, consuming this test run's private queues on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.db import connection

from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
# What workers run with, as the tests do (their fake provider, their database): also when a
# benchmark starts them.
SETTINGS_MODULE = "tests.settings"


def database_url() -> str:
    """The URL of the test database, as the in-process tests see it after pytest-django made it."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{s.get('HOST') or ''}{port}/{s['NAME']}"


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.alive():
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready():
            if not self.alive():
                raise AssertionError(f"worker exited early:\n{self.log()}")
            return " ready." in self.log()

        wait_for(ready, timeout=timeout, what="the Celery worker to be ready")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def start_worker(
    *,
    threads: int = 4,
    env: dict | None = None,
    queues: str | None = None,
    args: list[str] | None = None,
    wait: bool = True,
) -> Worker:
    """Start `celery worker --pool threads` and (unless `wait` is false) wait until it consumes."""
    name = f"caly-test-{uuid.uuid4().hex[:8]}@localhost"
    log_path = Path(tempfile.mkstemp(prefix="caly-worker-", suffix=".log")[1])
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "caly",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(threads),
        "--hostname",
        name,
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]
    if queues:
        cmd += ["--queues", queues]
    cmd += args or []
    process = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "DATABASE_URL": database_url(),
            **(env or {}),
        },
        stdout=open(log_path, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    worker = Worker(name=name, process=process, log_path=log_path)
    if wait:
        worker.wait_ready()
    return worker
