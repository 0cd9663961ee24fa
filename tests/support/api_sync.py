"""Requesting a sync through the API and waiting for a real worker to finish it."""

from __future__ import annotations

from tests.support.polling import wait_for

TERMINAL = ("succeeded", "failed")


def request_sync(api, account_id: int) -> int:
    response = api.post("/api/sync/", {"account": account_id}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["runs"][0]["id"]


def wait_run(api, run_id: int, timeout: float = 60) -> dict:
    def finished():
        run = api.get(f"/api/sync/{run_id}/").json()
        return run if run["state"] in TERMINAL else None

    return wait_for(finished, timeout=timeout, what=f"sync run {run_id} to finish")


def sync_and_wait(api, account_id: int, timeout: float = 60) -> dict:
    return wait_run(api, request_sync(api, account_id), timeout=timeout)
