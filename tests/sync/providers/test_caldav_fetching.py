"""Large calendars on slow servers: a first sync that changes strategy when the server cannot
answer for the whole calendar in time, multiget batches sized to the server, resuming, and what
the calendar remembers. Real Radicale behind the tests' DAV proxy, which makes it slow.
"""

from __future__ import annotations

import pytest

from calendars.models import Calendar, Event
from sync.models import SyncRun
from sync.services import sync_request_account
from tests.support.caldav_servers import vevent
from tests.support.polling import wait_for
from tests.support.queue_lab import wait_all_terminal
from tests.sync.providers.caldav_helpers import calendar_of, connect, only, run_sync

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

EVENTS = 240


@pytest.fixture
def slow(user, settings, server, cal, proxy):
    """An account on a calendar of EVENTS events behind a server that answers for the whole
    calendar only after 3 s; syncs give up on a request after 1 s and fetch 100 objects at a
    time."""
    server.put_collection(
        cal, [vevent(f"e{i}@example.com", summary=f"Meeting {i}") for i in range(EVENTS)]
    )
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    settings.CALY_HTTP_TIMEOUT = 1.0
    settings.CALY_SYNC_BATCH_SIZE = 100
    proxy.slow_whole_calendar = 3.0
    proxy.requests.clear()
    return account


def multiget_hrefs(proxy) -> list[int]:
    return [r.hrefs for r in proxy.requests if r.report == "calendar-multiget"]


@pytest.mark.parametrize("server", ["radicale"], indirect=True)
def test_first_sync_of_a_calendar_the_server_cannot_send_in_time_completes(
    server, cal, proxy, slow
):
    account = slow
    run = run_sync(account)

    assert run.state == "succeeded", run.error
    calendar = calendar_of(account, cal)
    assert Event.objects.filter(calendar=calendar).count() == EVENTS
    # The whole-calendar request was tried once; then one listing and batches of objects.
    assert [r.report for r in proxy.requests if r.slowed] == ["sync-collection"]
    assert proxy.count("PROPFIND") >= 1
    assert multiget_hrefs(proxy) == [100, 100, 40]
    assert run.progress["objects_done"] == run.progress["objects_total"] == EVENTS
    assert calendar.fetch_by_listing and calendar.sync_token

    # What worked is remembered: a full resync lists at once, and later syncs use the token.
    server.put(cal, "new.ics", vevent("new@example.com", summary="New"))
    proxy.requests.clear()
    assert run_sync(account).created == 1
    assert not any(r.slowed for r in proxy.requests)
    assert multiget_hrefs(proxy) == [1]
    calendar.sync_token = ""
    calendar.save(update_fields=["sync_token"])
    proxy.requests.clear()
    resync = run_sync(account)
    assert resync.state == "succeeded" and (resync.created, resync.updated) == (0, 0)
    assert not any(r.slowed for r in proxy.requests) and multiget_hrefs(proxy) == []


@pytest.mark.parametrize("server", ["radicale"], indirect=True)
def test_multiget_batches_shrink_to_what_the_server_answers_in_time(server, cal, proxy, slow):
    proxy.multiget_seconds = 0.015  # 100 objects: 1.5 s, past the timeout; 50: 0.75 s
    account = slow
    run = run_sync(account)

    assert run.state == "succeeded", run.error
    calendar = calendar_of(account, cal)
    assert Event.objects.filter(calendar=calendar).count() == EVENTS
    asked = multiget_hrefs(proxy)
    assert asked[0] == 100 and asked[1] == 50  # timed out, asked again in half
    assert max(asked[2:]) <= 50 and sum(asked[1:]) == EVENTS
    assert 0 < calendar.fetch_batch <= 50

    # The next full fetch starts at the size that worked.
    Event.objects.filter(calendar=calendar).delete()
    calendar.sync_token = ""
    calendar.save(update_fields=["sync_token"])
    proxy.requests.clear()
    assert run_sync(account).created == EVENTS
    assert multiget_hrefs(proxy)[0] == calendar.fetch_batch


@pytest.mark.parametrize("server", ["radicale"], indirect=True)
def test_fast_server_keeps_the_one_request_first_sync(user, server, cal, proxy):
    server.put_collection(cal, [vevent(f"e{i}@example.com") for i in range(20)])
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    proxy.requests.clear()

    run = run_sync(account)

    assert run.state == "succeeded" and run.created == 20
    calendar = calendar_of(account, cal)
    assert not calendar.fetch_by_listing and calendar.fetch_batch == 0
    # The calendar list, then one sync-collection with every object in it.
    assert [(r.method, r.report) for r in proxy.requests] == [
        ("PROPFIND", ""),
        ("REPORT", "sync-collection"),
    ]
    assert SyncRun.objects.get(pk=run.pk).progress["objects_total"] == 0


@pytest.mark.parametrize("server", ["radicale"], indirect=True)
def test_first_sync_killed_part_way_fetches_only_what_is_missing(lab, server, cal, proxy, slow):
    """`kill -9` of the worker in the middle of a first sync by listing: the run goes to another
    worker, which lists again and fetches only the objects not stored yet."""
    account = slow
    lab.configure(CALY_LEASE_SECONDS=2, CALY_HTTP_TIMEOUT=1.0, CALY_SYNC_BATCH_SIZE=20)
    proxy.multiget_seconds = 0.01  # 20 objects a batch: 0.2 s each, 12 batches
    first = lab.start_worker(threads=2)
    run = sync_request_account(account=account, trigger=SyncRun.Trigger.API)
    calendar = wait_for(
        lambda: (
            Calendar.objects.filter(account=account, selected=True, fetch_by_listing=True)
            .exclude(events=None)
            .first()
        ),
        timeout=30,
        what="the first batches to be stored",
    )
    first.kill()
    stored = Event.objects.filter(calendar=calendar).count()
    assert 0 < stored < EVENTS
    proxy.requests.clear()

    lab.start_worker(threads=2)
    (done,) = wait_all_terminal([run.pk], timeout=60)

    assert done.state == "succeeded", done.error
    rows = Event.objects.filter(calendar=calendar)
    assert rows.count() == EVENTS
    assert rows.values("uid").distinct().count() == EVENTS
    assert not any(r.slowed for r in proxy.requests)  # straight to the listing
    assert sum(multiget_hrefs(proxy)) == EVENTS - stored
    assert done.progress["objects_done"] == done.progress["objects_total"] == EVENTS
