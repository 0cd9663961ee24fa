"""`manage.py sync_user`: queue through the service, watch progress, run inline, fail clearly."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.test import APIClient

from calendars.models import Event
from sync import services
from sync.models import SyncRun
from tests.factories import connect_seeded_caldav, make_account, make_user
from tests.support.caldav_servers import vevent
from tests.support.gated_proxy import GatedProxy
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.workers import ROOT, database_url

pytestmark = pytest.mark.django_db


def sync_user(*args) -> str:
    out = io.StringIO()
    call_command("sync_user", *args, stdout=out, stderr=out)
    return out.getvalue()


def test_unknown_user_is_an_error():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        sync_user("nobody", "--wait")


def test_account_of_another_user_is_an_error():
    alice, bob = make_user("alice"), make_user("bob")
    bobs = make_account(bob)
    make_account(alice)
    with pytest.raises(CommandError, match=f"Account {bobs.pk} belongs to another user"):
        sync_user("alice", "--account", str(bobs.pk))
    with pytest.raises(CommandError, match="No account with id 999999"):
        sync_user("alice", "--account", "999999")
    assert not SyncRun.objects.exists()


def test_nothing_to_sync_says_why():
    user = make_user("carol")
    with pytest.raises(CommandError, match="carol has no accounts to sync"):
        sync_user("carol")
    account = make_account(user, name="Old server", status="needs_reauth")
    with pytest.raises(CommandError, match=r"no active accounts to sync: \d+ Old server"):
        sync_user("carol")
    with pytest.raises(CommandError, match="reconnect it before syncing"):
        sync_user("carol", "--account", str(account.pk))


@pytest.fixture
def connected(radicale, transactional_db):
    """A user with a Radicale account holding one calendar of four events."""
    account, name = connect_seeded_caldav(radicale, owner=make_user("dave"), events=4, prefix="cli")
    yield account
    radicale.delete_calendar(name)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_inline_syncs_in_process_with_a_progress_bar(connected):
    output = sync_user("dave", "--inline", "--interval", "0.05")

    run = SyncRun.objects.get(account=connected)
    assert (run.trigger, run.state, run.created) == ("command", "succeeded", 4)
    assert run.progress == {
        "calendars_done": 1,
        "calendars_total": 1,
        "events_processed": 4,
        "objects_done": 0,  # no listing: the fake's calendars come whole
        "objects_total": 0,
    }
    assert Event.objects.filter(calendar__account=connected).count() == 4
    bar = f"#{run.pk} Radicale"
    assert f"{bar}" in output
    assert "[########################] 1/1 calendars, 4 events  succeeded" in output
    assert f"Sync #{run.pk} of Radicale (CalDAV) succeeded in" in output
    assert "4 created, 0 updated, 0 deleted." in output


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_wait_follows_runs_done_by_a_worker(connected, worker):
    output = sync_user("dave", "--wait", "--interval", "0.1")

    run = SyncRun.objects.get(account=connected)
    assert run.state == "succeeded" and run.task_id
    lines = output.splitlines()
    assert lines[0] == f"Sync #{run.pk} of Radicale (CalDAV) queued."
    assert any(line.endswith("succeeded") and "4 events" in line for line in lines)
    assert lines[-1].startswith(f"Sync #{run.pk} of Radicale (CalDAV) succeeded in")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_failed_run_is_reported_with_its_error_and_fails_the_command(live_server):
    user = make_user("erin")
    make_account(user, name="Not CalDAV", url=live_server.url + "/no-such-page/")
    out = io.StringIO()

    with pytest.raises(CommandError, match=r"1 of 1 sync\(s\) did not succeed"):
        call_command("sync_user", "erin", "--inline", "--interval", "0.05", stdout=out)

    run = SyncRun.objects.get(account__owner=user)
    assert run.state == "failed" and run.error
    assert f"Sync #{run.pk} of Not CalDAV (CalDAV) failed" in out.getvalue()
    assert run.error in out.getvalue()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_unreachable_broker_exits_non_zero_and_queues_nothing():
    user = make_user("frank")
    make_account(user)
    dead_broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"

    proc = subprocess.run(
        [sys.executable, "manage.py", "sync_user", "frank"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), "CELERY_BROKER_URL": dead_broker},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RabbitMQ" in proc.stderr and "nothing was queued" in proc.stderr
    assert "--inline" in proc.stderr
    assert "guest:guest" not in proc.stderr  # the broker URL is shown without its password
    assert not SyncRun.objects.filter(account__owner=user).exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_progress_is_recorded_while_the_run_works(radicale, worker):
    """Calendars done / total and events processed move during the run (API, CLI), not at its
    end: the second calendar's listing is held until the first calendar's progress is seen."""
    prefix = uuid.uuid4().hex[:8]
    first, second = f"{prefix}-a", f"{prefix}-b"
    radicale.make_calendar(first, display_name="One")
    radicale.make_calendar(second, display_name="Two")
    for i in range(3):
        radicale.put(first, f"p{i}.ics", vevent(f"p{i}-{first}@example.com"))
    for i in range(3):
        radicale.put(second, f"q{i}.ics", vevent(f"q{i}-{second}@example.com"))
    proxy = GatedProxy(radicale.base_url)
    user = make_user("olga")
    api = APIClient()
    api.force_authenticate(user)
    services.account_connect(
        owner=user,
        provider="caldav",
        name="Two calendars",
        url=proxy.url + "/",
        username=radicale.user,
        credentials={"password": "secret-password"},
    )
    seen = {}
    out = io.StringIO()
    halfway_line = "[############------------] 1/2 calendars, 3 events  running"

    def watch_then_release():
        try:

            def halfway():
                runs = api.get("/api/sync/").json()["results"]
                return runs and runs[0]["progress"]["calendars_done"] == 1 and runs[0]

            seen["run"] = wait_for(halfway, timeout=60, what="the first calendar to be done")
            wait_for(lambda: halfway_line in out.getvalue(), timeout=10, what="the CLI to show it")
        finally:
            proxy.open_gate()
            connection.close()

    proxy.close_gate(except_first=True)
    releaser = threading.Thread(target=watch_then_release)
    releaser.start()
    try:
        call_command("sync_user", "olga", "--wait", "--interval", "0.05", stdout=out)
    finally:
        releaser.join(timeout=90)
        proxy.stop()
        for name in (first, second):
            radicale.delete_calendar(name)

    halfway = seen["run"]
    assert halfway["state"] == "running"
    assert halfway["progress"] == {
        "calendars_done": 1,
        "calendars_total": 2,
        "events_processed": 3,
        "objects_done": 0,
        "objects_total": 0,
    }
    assert halfway_line in out.getvalue()
    assert "[########################] 2/2 calendars, 6 events  succeeded" in out.getvalue()
