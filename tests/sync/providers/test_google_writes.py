"""Writing back to Google: events created, changed and deleted through Caly, carried out by the
run a worker makes (in-process here), against the fake Calendar API over real HTTP.

The queue side of writes (order, coalescing, real workers) is tested against CalDAV servers in
tests/sync/test_writes.py; here it is what is sent to Google and what comes of Google's answers.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from calendars.models import Account, Calendar, Event
from sync import services
from sync.models import PendingWrite, SyncRun
from sync.providers import provider_for
from sync.remote import OutgoingWrite
from sync.services import writes
from tests.factories import make_user
from tests.support.fake_google import SCOPE_READONLY
from tests.support.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt.UTC
VALUES = dict(
    summary="Dentist",
    start=dt.datetime(2026, 3, 2, 8, tzinfo=UTC),
    end=dt.datetime(2026, 3, 2, 9, tzinfo=UTC),
    timezone="Europe/Berlin",
)


@pytest.fixture(autouse=True)
def google_settings(settings, google, lab):
    """Talking to the fake; on queues of the test's own (`lab`), so that no worker of the run
    takes the writes' runs, which these tests carry out themselves."""
    for name, value in google.settings().items():
        setattr(settings, name, value)
    return settings


@pytest.fixture
def connected(google):
    """A Google user with one calendar, connected and synced once."""
    person = google.add_user()
    account = services.account_connect(
        owner=make_user(),
        provider="google",
        name="Google",
        credentials={"refresh_token": person.refresh_token},
    )
    run_writes(account, whole=True)
    return person, account, Calendar.objects.get(account=account, remote_id=person.primary)


def run_writes(account: Account, *, whole: bool = False) -> SyncRun:
    """What a worker does with the account's queued run (a writes-only one unless `whole`)."""
    run = services.sync_request_account(
        account=account,
        trigger=SyncRun.Trigger.API if whole else SyncRun.Trigger.WRITE,
        publish=False,
        writes_only=not whole,
    )
    services.sync_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.state == SyncRun.State.SUCCEEDED, run.error
    return run


def test_insert_patch_delete_reach_google_with_caly_ids_and_etags(google, connected):
    person, account, calendar = connected
    event = writes.event_create(calendar=calendar, values=writes.EventValues(**VALUES))
    run_writes(account)
    event.refresh_from_db()
    on_google = google.event(person, None, event.href)
    assert on_google["summary"] == "Dentist" and on_google["etag"] == event.etag
    assert event.uid == on_google["iCalUID"] and event.sync_state == Event.SyncState.SYNCED

    writes.event_update(event=event, changes={"summary": "Dentist (moved)"})
    run_writes(account)
    patch = google.api_requests(person, "calendar.events.patch")[-1]
    assert patch.if_match == event.etag  # conditional on the etag Caly knew
    assert google.event(person, None, event.href)["summary"] == "Dentist (moved)"

    # The next whole sync recognises Caly's own event: one row, the same id.
    run_writes(account, whole=True)
    assert list(Event.objects.filter(calendar=calendar).values_list("pk", flat=True)) == [event.pk]

    writes.event_delete(event=Event.objects.get(pk=event.pk))
    run_writes(account)
    assert google.event(person, None, event.href)["status"] == "cancelled"
    assert not Event.objects.filter(pk=event.pk).exists()


def test_an_edit_on_google_meanwhile_is_a_conflict_and_google_wins(google, connected):
    person, account, calendar = connected
    event = writes.event_create(calendar=calendar, values=writes.EventValues(**VALUES))
    run_writes(account)
    event.refresh_from_db()
    google.update_event(person, None, event.href, summary="Changed on Google")

    writes.event_update(event=event, changes={"location": "Room 2"})
    run_writes(account)
    event.refresh_from_db()
    assert event.sync_state == Event.SyncState.CONFLICT
    assert event.summary == "Changed on Google" and event.location == ""
    assert "location" in event.sync_error and "not applied" in event.sync_error
    assert google.event(person, None, event.href).get("location", "") == ""


def test_a_write_sent_again_after_its_worker_died_applies_once(google, connected):
    """The insert reached Google, then the worker died before recording it: the redelivered
    insert gets a 409 for the id Caly chose, recognises its own marker, and creates nothing."""
    person, account, calendar = connected
    writes.event_create(calendar=calendar, values=writes.EventValues(**VALUES))
    pending = PendingWrite.objects.get()
    outgoing = OutgoingWrite(
        kind=pending.kind, href=pending.href, marker=pending.marker, body=pending.body
    )
    provider = provider_for(account)
    first = provider.write(outgoing, calendar_id=calendar.remote_id, etag="")
    again = provider.write(outgoing, calendar_id=calendar.remote_id, etag="")
    assert again.etag == first.etag
    run_writes(account)  # the run itself sends it a third time
    live = [e for e in person.calendars[person.primary].events.values() if not e.cancelled]
    assert [e.resource["id"] for e in live] == [pending.href]
    assert Event.objects.get().sync_state == Event.SyncState.SYNCED


def test_a_read_only_calendar_refuses_and_a_read_only_grant_asks_to_reconnect(google):
    person = google.add_user(scope=SCOPE_READONLY)
    shared = google.add_calendar(person, "Team", access_role="reader")
    account = services.account_connect(
        owner=make_user(),
        provider="google",
        name="Google",
        credentials={"refresh_token": person.refresh_token},
    )
    run_writes(account, whole=True)
    team = Calendar.objects.get(account=account, remote_id=shared)
    assert team.writable is False
    with pytest.raises(writes.WriteRefused) as refused:
        writes.event_create(calendar=team, values=writes.EventValues(**VALUES))
    assert refused.value.field == "calendar"

    primary = Calendar.objects.get(account=account, remote_id=person.primary)
    writes.event_create(calendar=primary, values=writes.EventValues(**VALUES))
    run = services.sync_request_account(
        account=account, trigger=SyncRun.Trigger.WRITE, publish=False, writes_only=True
    )
    services.sync_run_execute(run_id=run.pk)
    account.refresh_from_db()
    assert account.status == Account.Status.NEEDS_REAUTH
    assert "read-only" in account.last_error
    assert PendingWrite.objects.get().state == PendingWrite.State.PENDING  # kept for later


def test_a_transient_error_retries_the_write_and_it_goes_first_next_time(
    google, connected, settings
):
    person, account, calendar = connected
    first = writes.event_create(calendar=calendar, values=writes.EventValues(**VALUES))
    second = writes.event_create(
        calendar=calendar, values=writes.EventValues(**{**VALUES, "summary": "Second"})
    )
    google.inject(person, status=503, method="calendar.events.insert", times=3)
    run = services.sync_request_account(
        account=account, trigger=SyncRun.Trigger.WRITE, publish=False, writes_only=True
    )
    services.sync_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.state == SyncRun.State.QUEUED and "503" in run.error  # back in the queue
    assert PendingWrite.objects.filter(state=PendingWrite.State.PENDING).count() == 2

    # What the delayed message does when it comes back (here, in this process).
    wait_for(lambda: SyncRun.objects.get(pk=run.pk).retry_at <= timezone.now(), timeout=30)
    services.sync_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.state == SyncRun.State.SUCCEEDED, run.error
    inserted = [r.body["summary"] for r in google.api_requests(person, "calendar.events.insert")]
    assert inserted[-2:] == ["Dentist", "Second"]  # in the order accepted
    for event in (first, second):
        event.refresh_from_db()
        assert event.sync_state == Event.SyncState.SYNCED
