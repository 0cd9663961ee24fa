"""Two-way sync: events created, changed and deleted through the API reach the calendar server.

Real Radicale and Xandikos on loopback, a real worker process, real RabbitMQ and PostgreSQL; what
is on the server is read back with python-caldav, a client independent of Caly's.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import uuid

import caldav
import pytest

from calendars.models import Account, Calendar, Event
from sync.models import PendingWrite
from tests.support.api_sync import sync_and_wait
from tests.support.caldav_servers import vevent
from tests.support.gated_proxy import GatedProxy
from tests.support.polling import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture(params=["radicale", "xandikos"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def calendar_name(server):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    server.make_calendar(name, display_name="Work")
    yield name
    server.delete_calendar(name)


def connect_and_sync(api, server, calendar_name) -> tuple[dict, dict]:
    response = api.post(
        "/api/accounts/",
        {
            "provider": "caldav",
            "name": "Mine",
            "url": server.base_url + "/",
            "username": server.user,
            "password": server.password,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    account = response.json()
    assert sync_and_wait(api, account["id"])["state"] == "succeeded"
    calendars = api.get(f"/api/calendars/?account={account['id']}").json()["results"]
    calendar = next(c for c in calendars if c["url"].endswith(f"/{calendar_name}/"))
    return account, calendar


def on_server(server, calendar_name) -> dict[str, str]:
    """uid → the object's text, as python-caldav reads the calendar."""
    client = caldav.DAVClient(
        url=server.base_url + "/", username=server.user, password=server.password
    )
    collection = client.calendar(url=server.calendar_url(calendar_name))
    objects = {}
    for item in collection.search(event=True, expand=False):
        component = item.icalendar_component
        objects[str(component["UID"])] = item.data
    return objects


def settled(api, event_id: int, state: str = "synced") -> dict:
    """Wait until the event's write is done (read from the database: polling the API would
    run into its read limit), then return it as the API shows it."""

    def done():
        row = Event.objects.filter(pk=event_id).values("sync_state").first()
        if row is None:
            return state == "gone"
        return row["sync_state"] == state

    try:
        wait_for(done, timeout=30, what=f"event {event_id} to be {state}")
    except AssertionError as exc:
        writes = list(PendingWrite.objects.values_list("kind", "state", "error"))
        raise AssertionError(f"{exc}; writes: {writes}") from None
    response = api.get(f"/api/events/{event_id}/")
    if state == "gone":
        assert response.status_code == 404
        return {}
    return response.json()


EVENT = {
    "summary": "Planning, with Bob",
    "start": "2026-03-02T09:00:00+01:00",
    "end": "2026-03-02T10:00:00+01:00",
    "timezone": "Europe/Berlin",
    "location": "Room 4",
}


def test_create_edit_delete_reach_the_server_and_the_next_sync_keeps_the_rows(
    api, server, calendar_name, worker
):
    account, calendar = connect_and_sync(api, server, calendar_name)
    assert calendar["writable"] is True

    created = api.post("/api/events/", {"calendar": calendar["id"], **EVENT}, format="json")
    assert created.status_code == 202, created.json()
    event = created.json()
    assert event["sync_state"] == "pending" and event["summary"] == EVENT["summary"]
    settled(api, event["id"])
    remote = on_server(server, calendar_name)
    assert list(remote) == [event["uid"]]
    assert "SUMMARY:Planning\\, with Bob" in remote[event["uid"]]
    assert "DTSTART;TZID=Europe/Berlin:20260302T090000" in remote[event["uid"]]

    changed = api.patch(f"/api/events/{event['id']}/", {"summary": "Planning"}, format="json")
    assert changed.status_code == 202 and changed.json()["sync_state"] == "pending"
    settled(api, event["id"])
    text = on_server(server, calendar_name)[event["uid"]]
    assert "SUMMARY:Planning\r\n" in text.replace("\n", "\r\n").replace("\r\r", "\r")
    assert "LOCATION:Room 4" in text

    # The next sync sees Caly's own writes as they are: no second row, same id.
    assert sync_and_wait(api, account["id"])["state"] == "succeeded"
    rows = Event.objects.filter(calendar_id=calendar["id"])
    assert list(rows.values_list("id", "summary")) == [(event["id"], "Planning")]

    deleted = api.delete(f"/api/events/{event['id']}/")
    assert deleted.status_code == 202
    listing = api.get(f"/api/events/?calendar={calendar['id']}").json()["results"]
    assert listing == []  # gone from every listing at once
    settled(api, event["id"], state="gone")
    assert on_server(server, calendar_name) == {}
    assert not PendingWrite.objects.filter(state=PendingWrite.State.PENDING).exists()


def test_properties_caly_does_not_manage_stay_byte_for_byte(api, radicale, worker):
    """Caly's PUT keeps every line it does not manage as the server sent it (Radicale itself
    refolds what it serves, so the PUT's body is compared with the object Caly had read)."""
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    alarm = "BEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:Soon\r\nTRIGGER:-PT15M\r\nEND:VALARM"
    source = vevent("keep@example.com", summary="Review").replace(
        "END:VEVENT", "X-VENDOR-NOTE;X-A=1:kept as it is\r\n" + alarm + "\r\nEND:VEVENT"
    )
    radicale.put(name, "keep.ics", source)
    _, calendar = connect_and_sync(api, radicale, name)
    event = Event.objects.get(calendar_id=calendar["id"], uid="keep@example.com")
    before = event.raw.replace("\r\n", "\n").split("\n")

    response = api.patch(f"/api/events/{event.pk}/", {"summary": "Review (moved)"}, format="json")
    assert response.status_code == 202
    settled(api, event.pk)
    sent = PendingWrite.objects.get(uid="keep@example.com").body.split("\r\n")
    managed = ("SUMMARY", "DTSTAMP", "LAST-MODIFIED", "SEQUENCE", "X-CALY-WRITE")
    assert [line for line in before if line and not line.startswith(managed)] == [
        line for line in sent if line and not line.startswith(managed)
    ]
    text = on_server(radicale, name)["keep@example.com"]
    assert "SUMMARY:Review (moved)" in text
    assert "X-VENDOR-NOTE;X-A=1:kept as it is" in text and "TRIGGER:-PT15M" in text
    radicale.delete_calendar(name)


def test_a_server_side_edit_meanwhile_is_a_conflict_and_the_server_copy_is_kept(
    api, radicale, worker
):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    radicale.put(name, "c.ics", vevent("c@example.com", summary="Original"))
    _, calendar = connect_and_sync(api, radicale, name)
    event = Event.objects.get(calendar_id=calendar["id"], uid="c@example.com")
    # Someone else edits it on the server after Caly's sync.
    radicale.put(name, "c.ics", vevent("c@example.com", summary="Edited elsewhere"))

    response = api.patch(f"/api/events/{event.pk}/", {"summary": "Mine"}, format="json")
    assert response.status_code == 202
    body = settled(api, event.pk, state="conflict")
    assert body["summary"] == "Edited elsewhere"
    assert "summary" in body["sync_error"] and "not applied" in body["sync_error"]
    assert "SUMMARY:Edited elsewhere" in on_server(radicale, name)["c@example.com"]
    radicale.delete_calendar(name)


def test_one_occurrence_edited_and_another_cancelled(api, radicale, worker):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    series = vevent("s@example.com", summary="Standup").replace(
        "END:VEVENT", "RRULE:FREQ=DAILY;COUNT=5\r\nEND:VEVENT"
    )
    radicale.put(name, "s.ics", series)
    _, calendar = connect_and_sync(api, radicale, name)
    master = Event.objects.get(calendar_id=calendar["id"], uid="s@example.com")
    window = f"/api/events/?calendar={calendar['id']}&start=2025-06-01T00:00:00Z&end=2027-06-01T00:00:00Z"
    listed = api.get(window)
    assert listed.status_code == 200, listed.json()
    occurrences = listed.json()["results"]
    second, third = occurrences[1]["recurrence_id"], occurrences[2]["recurrence_id"]

    edited = api.patch(
        f"/api/events/{master.pk}/",
        {"recurrence_id": second, "summary": "Standup (late)"},
        format="json",
    )
    assert edited.status_code == 202, edited.json()
    assert edited.json()["recurrence_id"] == second
    cancelled = api.delete(f"/api/events/{master.pk}/?recurrence_id={third}")
    assert cancelled.status_code == 202
    summaries = [o["summary"] for o in api.get(window).json()["results"]]
    assert summaries == ["Standup", "Standup (late)", "Standup", "Standup"]
    settled(api, master.pk)
    text = on_server(radicale, name)["s@example.com"]
    assert f"RECURRENCE-ID:{second}" in text and "SUMMARY:Standup (late)" in text
    assert f"EXDATE:{third}" in text
    radicale.delete_calendar(name)


def test_bad_fields_are_a_400_naming_them_and_store_nothing(api, radicale):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    account = api.post(
        "/api/accounts/",
        {
            "provider": "caldav",
            "name": "Mine",
            "url": radicale.base_url + "/",
            "username": radicale.user,
            "password": radicale.password,
        },
        format="json",
    ).json()
    calendar = api.get(f"/api/calendars/?account={account['id']}").json()["results"][0]
    for body, field in (
        ({**EVENT, "start": "tomorrow"}, "start"),
        ({**EVENT, "end": "2026-03-02T08:00:00+01:00"}, "end"),
        ({**EVENT, "timezone": "Mars/Olympus"}, "timezone"),
        ({**EVENT, "rrule": "FREQ=SOMETIMES"}, "rrule"),
        ({**EVENT}, "calendar"),
    ):
        if field != "calendar":
            body = {"calendar": calendar["id"], **body}
        response = api.post("/api/events/", body, format="json")
        assert response.status_code == 400 and field in response.json(), (field, response.json())
    assert not Event.objects.exists() and not PendingWrite.objects.exists()
    radicale.delete_calendar(name)


def test_the_same_idempotency_key_creates_one_event(api, radicale, worker):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    _, calendar = connect_and_sync(api, radicale, name)
    body = {"calendar": calendar["id"], **EVENT}
    first = api.post("/api/events/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post("/api/events/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    settled(api, first.json()["id"])
    assert len(on_server(radicale, name)) == 1
    radicale.delete_calendar(name)


def test_concurrent_edits_end_with_the_last_accepted_value_on_the_server(
    api, user, radicale, worker
):
    """50 edits of one event from concurrent clients: the server ends with the value of the
    edit the API accepted last (the order the worker slots apply them in is the order of
    acceptance, whatever the number of slots)."""
    from rest_framework.test import APIClient

    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    _, calendar = connect_and_sync(api, radicale, name)
    event = api.post("/api/events/", {"calendar": calendar["id"], **EVENT}, format="json").json()
    settled(api, event["id"])

    accepted = []
    lock = threading.Lock()

    def edit(worker_number: int):
        client = APIClient()
        client.force_authenticate(user)
        for i in range(10):
            summary = f"edit {worker_number}-{i}"
            response = client.patch(
                f"/api/events/{event['id']}/", {"summary": summary}, format="json"
            )
            assert response.status_code == 202
            with lock:
                accepted.append(summary)

    threads = [threading.Thread(target=edit, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writes = list(
        PendingWrite.objects.filter(uid=event["uid"], kind="update")
        .order_by("id")
        .values_list("body", flat=True)
    )
    assert len(writes) == 50
    last = Event.objects.get(pk=event["id"]).summary
    settled(api, event["id"])
    assert f"SUMMARY:{last}" in on_server(radicale, name)[event["uid"]]
    assert f"SUMMARY:{last}" in writes[-1]
    assert PendingWrite.objects.filter(uid=event["uid"], state="applied").count() == 51
    radicale.delete_calendar(name)


def test_a_put_sent_again_after_its_worker_died_recognises_itself(api, radicale):
    """The PUT reached the server, then the worker died before recording it: sent again, it
    meets If-None-Match: * (412), finds its own marker in the server's copy, and is done."""
    from sync.providers import provider_for
    from sync.remote import OutgoingWrite
    from sync.services import writes

    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    response = api.post(
        "/api/accounts/",
        {
            "provider": "caldav",
            "name": "Mine",
            "url": radicale.base_url + "/",
            "username": radicale.user,
            "password": radicale.password,
        },
        format="json",
    )
    account = Account.objects.get(pk=response.json()["id"])
    row = Calendar.objects.get(account=account, remote_id__endswith=f"/{name}/")
    start = dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC)
    values = writes.EventValues(summary="Once", start=start, end=start + dt.timedelta(hours=1))
    writes.event_create(calendar=row, values=values)
    pending = PendingWrite.objects.get()
    outgoing = OutgoingWrite(
        kind=pending.kind, href=pending.href, marker=pending.marker, body=pending.body
    )
    provider = provider_for(account)
    first = provider.write(outgoing, calendar_id=row.remote_id, etag="")
    again = provider.write(outgoing, calendar_id=row.remote_id, etag="")
    assert again.etag == first.etag
    assert len(on_server(radicale, name)) == 1
    radicale.delete_calendar(name)


def test_kill_9_mid_write_leaves_exactly_one_event_on_the_server(lab, api, radicale):
    """The worker dies after Radicale applied its PUT and before it heard back: the message is
    delivered again to another worker, whose PUT (If-None-Match: *) finds the object there with
    its own marker. One event on the server, one row, the write applied once."""
    lab.configure(CALY_LEASE_SECONDS=2)
    proxy = GatedProxy(radicale.base_url)
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    victim = lab.start_worker(threads=2)
    try:
        response = api.post(
            "/api/accounts/",
            {
                "provider": "caldav",
                "name": "Mine",
                "url": proxy.url + "/",
                "username": radicale.user,
                "password": radicale.password,
            },
            format="json",
        )
        account = response.json()
        calendar = Calendar.objects.get(account_id=account["id"], remote_id__endswith=f"/{name}/")
        proxy.hold_put_answers()
        created = api.post("/api/events/", {"calendar": calendar.pk, **EVENT}, format="json")
        assert created.status_code == 202
        wait_for(lambda: proxy.answers_held, timeout=30, what="the PUT to reach Radicale")
        assert len(on_server(radicale, name)) == 1  # applied; the worker has not heard back

        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        proxy.release_put_answers()
        lab.start_worker(threads=2)
        settled(api, created.json()["id"])
        assert len(on_server(radicale, name)) == 1
        assert Event.objects.filter(calendar=calendar).count() == 1
        write = PendingWrite.objects.get()
        assert write.state == PendingWrite.State.APPLIED
    finally:
        proxy.stop()
        radicale.delete_calendar(name)
