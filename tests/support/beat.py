"""A real `celery beat` process (DatabaseScheduler) reading the test database's schedule."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.polling import wait_for
from tests.support.workers import ROOT, Worker, database_url


def start_beat() -> Worker:
    """Start beat and wait until it has loaded the schedule from the database."""
    log_path = Path(tempfile.mkstemp(prefix="caly-beat-", suffix=".log")[1])
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "caly",
            "beat",
            "--scheduler",
            "django_celery_beat.schedulers:DatabaseScheduler",
            "--pidfile",
            str(log_path.with_suffix(".pid")),
            "--loglevel",
            "DEBUG",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url()},
        stdout=open(log_path, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    beat = Worker(name="beat", process=process, log_path=log_path)

    def ready():
        if not beat.alive():
            raise AssertionError(f"beat exited early:\n{beat.log()}")
        return "beat: Starting..." in beat.log()

    wait_for(ready, timeout=60, what="celery beat to start")
    return beat
