"""Rate limits hold across web processes: two servers of their own, one user, one allowance.

`gunicorn -w 4` runs four processes; a count kept in each process's memory would let a user post
four times the limit. The default cache is a table `migrate` creates, which every process reads.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from tests.factories import make_user
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.workers import SETTINGS_MODULE, database_url

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.django_db(transaction=True)


def _environment(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CALY_CACHE_URL"}  # the default cache
    env.update({"DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "DJANGO_DEBUG": "0", **changes})
    return env


class WebProcess:
    """`manage.py runserver` on a port of its own: one web process, as one gunicorn worker is."""

    def __init__(self, env: dict):
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="caly-web-", suffix=".log")[1])
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runserver",
                "--noreload",
                "--nothreading",
                f"127.0.0.1:{self.port}",
            ],
            cwd=ROOT,
            env={**env, "DJANGO_ALLOWED_HOSTS": "127.0.0.1"},
            stdout=open(self.log_path, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"runserver exited:\n{self.log_path.read_text()}")
            try:
                return requests.get(f"{self.url}/admin/login/", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, timeout=60, what="the web process to answer")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def two_web_processes():
    env = _environment(DATABASE_URL=database_url(), CALY_THROTTLE_SYNC="4/minute")
    servers = [WebProcess(env), WebProcess(env)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_user_gets_one_allowance_however_many_web_processes_serve_them(two_web_processes):
    token = Token.objects.create(user=make_user("alice")).key
    first, second = two_web_processes

    def request_sync(server) -> int:
        return requests.post(
            f"{server.url}/api/sync/",
            json={},
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        ).status_code

    # Alternating between the processes, as a load balancer would.
    answers = [request_sync(server) for server in [first, second] * 3]

    assert answers == [202, 202, 202, 202, 429, 429]


def test_migrate_creates_the_cache_table_on_sqlite(tmp_path):
    """A fresh SQLite database: `migrate` alone makes the default cache usable."""
    path = tmp_path / "fresh.sqlite3"
    env = _environment(DATABASE_URL=f"sqlite:///{path}")
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.core.cache import cache; cache.set('k', 'shared', 60); "
            "print(cache.get('k'))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().splitlines()[-1] == "shared"
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "caly_cache" in tables
