"""POST /api/sync/ from a process of its own, so it can be pointed at a broker that is down.

python -m tests.support.post_sync USER_ID ACCOUNT_ID   (prints {"status", "body", "seconds"})
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.support.workers import ROOT, database_url


def post_sync_in_process(*, user_id: int, account_id: int, env: dict) -> dict:
    """Run this module in a subprocess with `env` (e.g. CELERY_BROKER_URL) and the test database."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.post_sync", str(user_id), str(account_id)],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "CALY_LOG_LEVEL": "CRITICAL",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(user_id: int, account_id: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "caly.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(get_user_model().objects.get(pk=user_id))
    started = time.monotonic()
    response = client.post("/api/sync/", {"account": account_id}, format="json")
    seconds = time.monotonic() - started
    print(json.dumps({"status": response.status_code, "body": response.json(), "seconds": seconds}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
