"""Run Caly's benchmarks: each bench/bench_*.py in its own process, on a database and queues of its own.

Usage: python bench/run.py [NAME ...]   (NAME is the part after bench_, e.g. `queue`)
Each benchmark prints its figures and writes them to bench/out/<name>.json.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("CALY_BENCH_ADMIN_DSN", "dbname=postgres user=root host=127.0.0.1")


def _admin(sql: str) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def _delete_queues(broker_url: str, prefix: str) -> None:
    """The run's own queues go with it (delay queues expire by themselves)."""
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for name in (f"{prefix}.sync", f"{prefix}.maintenance"):
            channel.queue_delete(name)
            channel.exchange_delete(name)


def main(names: list[str]) -> int:
    scripts = sorted((ROOT / "bench").glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    run_id = f"{int(time.time())}{os.getpid()}"
    database = f"caly_bench_{run_id}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "caly.settings",
        "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{database}",
        "CELERY_BROKER_URL": os.environ.get(
            "CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"
        ),
        "CALY_QUEUE_PREFIX": f"caly-bench-{run_id}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "CALY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "CALY_ALLOW_PRIVATE_URLS": "1",
        "DJANGO_DEBUG": "0",
        "CALY_LOG_LEVEL": "WARNING",
    }
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    _admin(f'CREATE DATABASE "{database}"')
    failed = 0
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0", "--no-input"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        for script in scripts:
            print(f"\n=== {script.stem} ===", flush=True)
            result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env)
            failed += result.returncode != 0
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _delete_queues(env["CELERY_BROKER_URL"], env["CALY_QUEUE_PREFIX"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
