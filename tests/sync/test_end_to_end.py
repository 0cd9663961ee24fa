"""The whole path a user takes: connect a CalDAV account, POST /api/sync/, a real worker syncs.

Real Radicale on loopback, real RabbitMQ, a real Celery worker process, real PostgreSQL.
"""

from __future__ import annotations

import uuid

import pytest

from calendars.models import Event
from sync.models import SyncRun
from tests.support.api_sync import sync_and_wait
from tests.support.caldav_servers import vevent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def calendar_name(radicale):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name, display_name="Work")
    yield name
    radicale.delete_calendar(name)


def connect(api, server, url=None) -> dict:
    response = api.post(
        "/api/accounts/",
        {
            "provider": "caldav",
            "name": "My server",
            "url": url or server.base_url + "/",
            "username": server.user,
            "password": "secret-password",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def stored_summaries(calendar_id: int) -> dict[str, str]:
    return dict(Event.objects.filter(calendar_id=calendar_id).values_list("uid", "summary"))


def test_connect_sync_change_and_resync(api, radicale, calendar_name, worker):
    for i in range(5):
        radicale.put(
            calendar_name, f"e{i}.ics", vevent(f"e{i}@example.com", summary=f"Meeting {i}")
        )

    account = connect(api, radicale)
    assert "password" not in account
    calendars = api.get(f"/api/calendars/?account={account['id']}").json()["results"]
    work = next(c for c in calendars if c["url"].endswith(f"/{calendar_name}/"))
    assert work["name"] == "Work"

    run = sync_and_wait(api, account["id"])
    assert run["state"] == "succeeded", run
    assert run["created"] == 5 and run["updated"] == 0 and run["deleted"] == 0
    assert run["started_at"] and run["finished_at"]
    events = api.get(f"/api/events/?calendar={work['id']}").json()["results"]
    assert sorted(e["summary"] for e in events) == [f"Meeting {i}" for i in range(5)]
    assert {e["uid"] for e in events} == {f"e{i}@example.com" for i in range(5)}

    # Change one, delete one, add one on the server: the next sync brings exactly that.
    radicale.put(calendar_name, "e1.ics", vevent("e1@example.com", summary="Moved meeting"))
    radicale.delete(calendar_name, "e2.ics")
    radicale.put(calendar_name, "new.ics", vevent("new@example.com", summary="Brand new"))
    run = sync_and_wait(api, account["id"])
    assert (run["state"], run["created"], run["updated"], run["deleted"]) == ("succeeded", 1, 1, 1)
    assert stored_summaries(work["id"]) == {
        "e0@example.com": "Meeting 0",
        "e1@example.com": "Moved meeting",
        "e3@example.com": "Meeting 3",
        "e4@example.com": "Meeting 4",
        "new@example.com": "Brand new",
    }

    # No change on the server: nothing is written.
    ids_before = dict(Event.objects.filter(calendar_id=work["id"]).values_list("uid", "updated_at"))
    run = sync_and_wait(api, account["id"])
    assert (run["state"], run["created"], run["updated"], run["deleted"]) == ("succeeded", 0, 0, 0)
    assert (
        dict(Event.objects.filter(calendar_id=work["id"]).values_list("uid", "updated_at"))
        == ids_before
    )


def test_same_run_delivered_twice_does_not_duplicate(api, radicale, calendar_name, worker):
    """A redelivered message (same run id) leaves exactly one row per event."""
    from sync.services import sync_publish

    for i in range(3):
        radicale.put(calendar_name, f"d{i}.ics", vevent(f"d{i}@example.com"))
    account = connect(api, radicale)
    run = sync_and_wait(api, account["id"])
    assert run["state"] == "succeeded"

    sync_publish(run=SyncRun.objects.get(pk=run["id"]))  # the same message again
    second = sync_and_wait(api, account["id"])
    assert second["state"] == "succeeded"
    uids = list(
        Event.objects.filter(calendar__account_id=account["id"]).values_list("uid", flat=True)
    )
    assert sorted(uids) == [f"d{i}@example.com" for i in range(3)]
    assert SyncRun.objects.get(pk=run["id"]).attempts == 1


def test_unreachable_and_non_caldav_urls_are_400(api, radicale, live_server):
    not_caldav = api.post(
        "/api/accounts/",
        {"provider": "caldav", "name": "x", "url": live_server.url + "/no-such-page/"},
        format="json",
    )
    assert not_caldav.status_code == 400
    assert "url" in not_caldav.json()

    unreachable = api.post(
        "/api/accounts/",
        {"provider": "caldav", "name": "x", "url": "http://127.0.0.1:9/"},
        format="json",
    )
    assert unreachable.status_code == 400
    assert "url" in unreachable.json()

    from calendars.models import Account

    assert not Account.objects.exists()


def test_a_calendar_home_that_moved_is_found_again(api, radicale, calendar_name, worker):
    from calendars.models import Account

    radicale.put(calendar_name, "h.ics", vevent("h@example.com"))
    account = connect(api, radicale)
    Account.objects.filter(pk=account["id"]).update(home_url=radicale.home_url + "moved-away/")

    run = sync_and_wait(api, account["id"])

    assert (run["state"], run["error"]) == ("succeeded", "")
    assert Account.objects.get(pk=account["id"]).home_url == radicale.home_url
    assert Event.objects.filter(calendar__account_id=account["id"], uid="h@example.com").exists()
