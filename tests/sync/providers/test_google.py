"""The Google Calendar provider against the local fake of the Calendar API, over real HTTP.

Provider-level: connect through the service, sync in-process with the same service calls a
worker makes (`events_apply` per batch), and look at what was stored and what was sent.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import time
from urllib.parse import unquote

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calendars.models import Account, Event
from sync import selectors, services
from sync.budget import budget_spend
from sync.ical import parse_object
from sync.providers import provider_for
from sync.providers.base import AuthError, ProviderError, TransientError
from sync.providers.google import GoogleProvider
from sync.remote import Cursor
from tests.factories import make_user
from tests.support.fake_google import load_discovery
from tests.sync.providers.caldav_helpers import run_sync

pytestmark = pytest.mark.django_db

UTC = dt.UTC


@pytest.fixture
def google_settings(settings, google):
    for name, value in google.settings().items():
        setattr(settings, name, value)
    return settings


def connect(google_user, owner=None) -> Account:
    return services.account_connect(
        owner=owner or make_user(),
        provider="google",
        name="Google",
        credentials={"refresh_token": google_user.refresh_token},
    )


def sync(account: Account) -> dict:
    """One sync of every calendar of the account, applied batch by batch like a worker does."""
    account.refresh_from_db()
    provider = provider_for(account)
    totals = {"created": 0, "updated": 0, "deleted": 0, "batches": 0}
    try:
        remote = provider.discover()
        listed = services.calendars_reconcile(account=account, remote=remote)
        by_id = {r.remote_id: r for r in remote}
        for calendar in (each.calendar for each in listed):
            calendar.refresh_from_db()
            # As the worker passes them: read when the provider asks.
            etags = functools.partial(selectors.stored_etags, calendar_id=calendar.pk)
            cursor = Cursor(sync_token=calendar.sync_token)
            remote_calendar = by_id[calendar.remote_id]
            for batch in provider.changes(remote_calendar, cursor=cursor, stored_etags=etags):
                plan = services.events_apply(calendar=calendar, batch=batch)
                totals["created"] += len(plan.create)
                totals["updated"] += len(plan.update)
                totals["deleted"] += len(plan.delete_ids)
                totals["batches"] += 1
    finally:
        provider.close()
    return totals


def stored(account: Account) -> dict[tuple[str, str], Event]:
    return {(e.uid, e.recurrence_id): e for e in Event.objects.filter(calendar__account=account)}


def events_list_calls(google, user) -> int:
    return len(google.api_requests(user, "calendar.events.list"))


# --- connecting -------------------------------------------------------------------------------
def test_connect_lists_calendars_on_every_page_and_learns_the_address(google, google_settings):
    user = google.add_user(page_size=2, calendar_name="Alice")
    work = google.add_calendar(user, "Work", time_zone="America/New_York", color="#ff0000")
    google.add_calendar(user, "Family")

    account = connect(user)

    assert account.username == user.email
    calendars = {c.remote_id: c for c in account.calendars.all()}
    assert set(calendars) == {user.email, work} | {
        c for c in user.calendars if c not in (user.email, work)
    }
    assert len(calendars) == 3
    assert (calendars[work].name, calendars[work].timezone, calendars[work].color) == (
        "Work",
        "America/New_York",
        "#ff0000",
    )
    assert len(google.api_requests(user, "calendar.calendarList.list")) == 2  # two pages


def test_api_connect_stores_the_token_encrypted_and_never_shows_it(api, google, google_settings):
    user = google.add_user()
    response = api.post(
        "/api/accounts/",
        {"provider": "google", "name": "Mine", "refresh_token": user.refresh_token},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["provider"] == "google" and body["username"] == user.email
    assert user.refresh_token not in json.dumps(body)
    listed = api.get("/api/accounts/").content.decode()
    assert user.refresh_token not in listed
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM calendars_account WHERE id = %s", [body["id"]])
        (column,) = cursor.fetchone()
    assert user.refresh_token not in column and "refresh_token" not in column
    assert Account.objects.get(pk=body["id"]).credentials == {"refresh_token": user.refresh_token}


def test_connecting_the_same_google_address_twice_is_400_naming_the_account(
    api, user, google, google_settings
):
    person = google.add_user()
    first = connect(person, owner=user)

    again = api.post(
        "/api/accounts/",
        {"provider": "google", "name": "Again", "refresh_token": google.new_refresh_token(person)},
        format="json",
    )

    assert again.status_code == 400
    assert again.json() == {
        "refresh_token": [
            f"This Google account ({person.email}) is already connected as account {first.pk} "
            "(“Google”)."
        ]
    }
    assert Account.objects.filter(owner=user).count() == 1


def test_reconnecting_with_another_google_users_token_is_400_and_changes_nothing(
    api, user, google, google_settings
):
    person = google.add_user()
    account = connect(person, owner=user)

    refused = api.patch(
        f"/api/accounts/{account.pk}/",
        {"refresh_token": google.add_user().refresh_token},
        format="json",
    )

    assert refused.status_code == 400
    assert "Connect it as a new account" in refused.json()["refresh_token"][0]
    account.refresh_from_db()
    assert account.credentials == {"refresh_token": person.refresh_token}


def test_api_connect_with_a_bad_token_is_400_naming_the_field(api, google, google_settings):
    refused = api.post(
        "/api/accounts/",
        {"provider": "google", "name": "Mine", "refresh_token": "1//not-a-real-token"},
        format="json",
    )
    assert refused.status_code == 400
    assert "invalid_grant" in refused.json()["refresh_token"][0]
    missing = api.post("/api/accounts/", {"provider": "google", "name": "Mine"}, format="json")
    assert missing.status_code == 400 and "refresh_token" in missing.json()
    assert not Account.objects.exists()


def test_connect_without_client_configured_is_a_clear_error(google, google_settings):
    google_settings.CALY_GOOGLE_CLIENT_SECRET = ""
    with pytest.raises(ProviderError, match="CALY_GOOGLE_CLIENT_ID"):
        connect(google.add_user())


# --- syncing ----------------------------------------------------------------------------------
def test_initial_sync_of_a_multi_page_calendar_then_incremental_changes(google, google_settings):
    user = google.add_user(page_size=3)
    ids = [
        google.insert_event(user, summary=f"Meeting {i}", start=f"2026-02-{i + 1:02d}T09:00:00Z")[
            "id"
        ]
        for i in range(8)
    ]
    account = connect(user)

    first = sync(account)
    assert (first["created"], first["updated"], first["deleted"]) == (8, 0, 0)
    assert first["batches"] == 3  # one per page
    assert events_list_calls(google, user) == 3
    rows = stored(account)
    assert sorted(e.summary for e in rows.values()) == [f"Meeting {i}" for i in range(8)]
    assert {e.href for e in rows.values()} == set(ids)
    calendar = account.calendars.get(remote_id=user.email)
    assert calendar.sync_token.startswith("fake-sync-")
    # The first page asked for Google's largest page; later pages only followed the page token.
    first_query = google.api_requests(user, "calendar.events.list")[0].query
    assert first_query["maxResults"] == ["2500"] and "syncToken" not in first_query
    ids_before = {k: e.pk for k, e in rows.items()}

    google.update_event(user, None, ids[1], summary="Moved meeting")
    google.delete_event(user, None, ids[2])
    new = google.insert_event(user, summary="Brand new", start="2026-02-20T09:00:00Z")
    before = events_list_calls(google, user)
    second = sync(account)
    assert (second["created"], second["updated"], second["deleted"]) == (1, 1, 1)
    assert events_list_calls(google, user) - before == 1
    sent = google.api_requests(user, "calendar.events.list")[-1].query
    assert set(sent) == {"maxResults", "syncToken", "alt"}
    rows = stored(account)
    assert {e.summary for e in rows.values()} >= {"Moved meeting", "Brand new"}
    assert f"{ids[2]}@google.com" not in {uid for uid, _ in rows}
    assert rows[(f"{ids[1]}@google.com", "")].pk == ids_before[(f"{ids[1]}@google.com", "")]
    assert rows[(new["iCalUID"], "")].raw and json.loads(rows[(new["iCalUID"], "")].raw)["id"]

    # Nothing changed: one request, nothing written.
    before = events_list_calls(google, user)
    updated_at = {k: e.updated_at for k, e in stored(account).items()}
    with CaptureQueriesContext(connection) as queries:
        third = sync(account)
    assert (third["created"], third["updated"], third["deleted"]) == (0, 0, 0)
    assert events_list_calls(google, user) - before == 1
    # An empty page: the stored events were not even read.
    assert not any('FROM "calendars_event"' in q["sql"] for q in queries.captured_queries)
    assert {k: e.updated_at for k, e in stored(account).items()} == updated_at


def test_timed_all_day_and_recurring_events_map_like_caldav(google, google_settings):
    user = google.add_user()
    timed = google.insert_event(
        user,
        summary="Dentist",
        start="2026-03-02T10:00:00+01:00",
        end="2026-03-02T11:30:00+01:00",
        time_zone="Europe/Berlin",
        location="Main St 1",
        description="Bring the card",
    )
    all_day = google.insert_event(user, summary="Holiday", start="2026-03-03", end="2026-03-05")
    master = google.insert_event(
        user,
        summary="Standup",
        start="2026-03-02T09:00:00+01:00",
        end="2026-03-02T09:15:00+01:00",
        time_zone="Europe/Berlin",
        recurrence=["RRULE:FREQ=WEEKLY;COUNT=6", "EXDATE;TZID=Europe/Berlin:20260309T090000"],
        ical_uid="standup-123@example.com",
    )
    google.override_instance(
        user,
        None,
        master["id"],
        "2026-03-16T09:00:00+01:00",
        summary="Standup (late)",
        start="2026-03-16T11:00:00+01:00",
    )
    google.cancel_instance(user, None, master["id"], "2026-03-23T09:00:00+01:00")
    account = connect(user)
    sync(account)
    rows = stored(account)

    dentist = rows[(timed["iCalUID"], "")]
    assert dentist.start == dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert dentist.end == dt.datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    assert (dentist.all_day, dentist.timezone, dentist.status) == (
        False,
        "Europe/Berlin",
        "CONFIRMED",
    )
    assert (dentist.location, dentist.description) == ("Main St 1", "Bring the card")
    assert dentist.etag == timed["etag"] and dentist.href == timed["id"]

    holiday = rows[(all_day["iCalUID"], "")]
    assert holiday.all_day and holiday.timezone == ""
    assert (holiday.start, holiday.end) == (
        dt.datetime(2026, 3, 3, tzinfo=UTC),
        dt.datetime(2026, 3, 5, tzinfo=UTC),
    )

    series = rows[("standup-123@example.com", "")]
    assert series.rrule == "FREQ=WEEKLY;COUNT=6"
    assert series.exdate == ["20260309T080000Z"]

    # The same meeting as CalDAV would hand it over: same UID, same RECURRENCE-ID form.
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
        "UID:standup-123@example.com\r\nDTSTAMP:20260101T000000Z\r\n"
        "RECURRENCE-ID;TZID=Europe/Berlin:20260316T090000\r\n"
        "DTSTART;TZID=Europe/Berlin:20260316T110000\r\n"
        "DTEND;TZID=Europe/Berlin:20260316T111500\r\nSUMMARY:Standup (late)\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    (caldav_view,) = parse_object(ics)
    moved = rows[("standup-123@example.com", caldav_view.recurrence_id)]
    assert moved.recurrence_id == "20260316T080000Z"
    assert (moved.summary, moved.start, moved.end) == (
        caldav_view.summary,
        caldav_view.start,
        caldav_view.end,
    )
    cancelled = rows[("standup-123@example.com", "20260323T080000Z")]
    assert cancelled.status == "CANCELLED"


def test_cancelled_occurrence_alone_finds_its_series_uid(google, google_settings):
    """Google leaves the iCalUID out of a cancelled occurrence: Caly asks for the series once."""
    user = google.add_user()
    master = google.insert_event(
        user,
        summary="Weekly",
        start="2026-04-06",
        end="2026-04-07",
        recurrence=["RRULE:FREQ=WEEKLY"],
        ical_uid="weekly@example.com",
    )
    account = connect(user)
    sync(account)

    google.cancel_instance(user, None, master["id"], "2026-04-13")
    google.cancel_instance(user, None, master["id"], "2026-04-20")
    result = sync(account)
    assert result["created"] == 2
    rows = stored(account)
    assert rows[("weekly@example.com", "20260413")].status == "CANCELLED"
    assert rows[("weekly@example.com", "20260420")].status == "CANCELLED"
    assert len(google.api_requests(user, "calendar.events.get")) == 1

    # Deleting the series removes it and every stored occurrence of it.
    google.delete_event(user, None, master["id"])
    result = sync(account)
    assert result["deleted"] == 3
    assert not stored(account)


def test_expired_sync_token_resyncs_in_full_keeping_row_ids(google, google_settings):
    user = google.add_user(page_size=4)
    ids = [
        google.insert_event(user, summary=f"E{i}", start=f"2026-05-{i + 1:02d}T08:00:00Z")["id"]
        for i in range(10)
    ]
    account = connect(user)
    sync(account)
    before = {k: e.pk for k, e in stored(account).items()}

    google.expire_sync_tokens(user)
    google.update_event(user, None, ids[0], summary="E0 changed")
    google.delete_event(user, None, ids[1])
    added = google.insert_event(user, summary="E-new", start="2026-05-30T08:00:00Z")
    result = sync(account)

    assert (result["created"], result["updated"], result["deleted"]) == (1, 1, 1)
    statuses = [r.status for r in google.api_requests(user, "calendar.events.list")]
    assert 410 in statuses
    after = {k: e.pk for k, e in stored(account).items()}
    kept = set(before) - {(f"{ids[1]}@google.com", "")}
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert (added["iCalUID"], "") in after
    assert stored(account)[(f"{ids[0]}@google.com", "")].summary == "E0 changed"
    calendar = account.calendars.get()
    assert calendar.sync_token.startswith("fake-sync-")


def test_interrupted_sync_resumes_from_the_old_token(google, google_settings):
    """Pages are stored as they arrive; the new sync token only with the last one."""
    user = google.add_user(page_size=3)
    for i in range(9):
        google.insert_event(user, summary=f"E{i}", start=f"2026-06-{i + 1:02d}T08:00:00Z")
    account = connect(user)
    google.inject(user, status=400, reason="badRequest", where=lambda q: "pageToken" in q, times=1)
    with pytest.raises(ProviderError):
        sync(account)
    calendar = account.calendars.get()
    assert calendar.sync_token == ""  # the cursor did not move
    partial = {k: e.pk for k, e in stored(account).items()}
    assert len(partial) == 3

    result = sync(account)
    assert (result["created"], result["updated"], result["deleted"]) == (6, 0, 0)
    after = stored(account)
    assert len(after) == 9
    assert {k: after[k].pk for k in partial} == partial
    assert account.calendars.get().sync_token.startswith("fake-sync-")


# --- authorisation ----------------------------------------------------------------------------
def test_revoked_grant_is_an_auth_error_without_retries(google, google_settings):
    user = google.add_user()
    account = connect(user)
    google.revoke(user)
    tokens_before = len(google.token_requests)
    with pytest.raises(AuthError) as caught:
        sync(account)
    message = str(caught.value)
    assert "invalid_grant" in message and "Reconnect" in message
    assert user.refresh_token not in message
    # One refresh attempt (after the API refused the cached access token), no retry loop.
    assert [r[2] for r in google.token_requests[tokens_before:]] == ["invalid_grant"]


def test_expired_access_token_is_refreshed_once(google, google_settings):
    user = google.add_user()
    google.insert_event(user, summary="One")
    account = connect(user)
    google.expire_access_tokens(user)
    tokens_before = len(google.token_requests)
    assert sync(account)["created"] == 1
    assert [r[2] for r in google.token_requests[tokens_before:]] == ["ok"]


def test_access_token_is_reused_by_the_next_sync(google, google_settings):
    user = google.add_user()
    account = connect(user)
    tokens_before = len(google.token_requests)
    sync(account)
    sync(account)
    assert len(google.token_requests) == tokens_before


def test_a_second_401_after_the_refresh_asks_to_reconnect(google, google_settings):
    user = google.add_user()
    account = connect(user)
    api_before, tokens_before = len(google.api_requests(user)), len(google.token_requests)
    google.inject(user, status=401, method=None, times=2)
    with pytest.raises(AuthError, match="refused Caly's access.*Reconnect"):
        sync(account)
    # One refresh and one repeat, no loop.
    assert [r.status for r in google.api_requests(user)[api_before:]] == [401, 401]
    assert [r[2] for r in google.token_requests[tokens_before:]] == ["ok"]


def test_every_api_request_takes_a_budget_slot_token_requests_none(
    google, google_settings, monkeypatch
):
    from sync.providers.google import client as google_client

    spent = []

    def spend(**kwargs):
        spent.append(kwargs["key"])
        return budget_spend(**kwargs)

    monkeypatch.setattr(google_client, "budget_spend", spend)
    user = google.add_user()
    google.insert_event(user, summary="One")
    account = connect(user)
    google.expire_access_tokens(user)
    api_before, tokens_before = len(google.api_requests()), len(google.token_requests)
    spent.clear()
    sync(account)
    sent = google.api_requests()[api_before:]  # the refused one carries no known user
    assert [r.status for r in sent][:2] == [401, 200]  # refused, refreshed, repeated
    assert len(google.token_requests) - tokens_before == 1
    assert spent == [f"google:{user.email}"] * len(sent)


def test_unreachable_token_endpoint_is_transient(google, google_settings):
    google_settings.CALY_HTTP_TIMEOUT = 0.5
    user = google.add_user()
    account = connect(user)
    google.expire_access_tokens(user)
    google.inject(user, status=None, delay=2, method="token")
    with pytest.raises(TransientError, match="Cannot reach Google's token endpoint"):
        sync(account)


# --- quotas and faults ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [
        {"status": 403, "reason": "rateLimitExceeded"},
        {"status": 403, "reason": "userRateLimitExceeded"},
        {"status": 429, "retry_after": 1},
        {"status": 500},
        {"status": 503},
    ],
    ids=["403-rate", "403-user-rate", "429-retry-after", "500", "503"],
)
def test_throttling_and_server_errors_are_retried_briefly(google, google_settings, fault):
    user = google.add_user(page_size=2)
    for i in range(4):
        google.insert_event(user, summary=f"E{i}", start=f"2026-07-{i + 1:02d}T08:00:00Z")
    account = connect(user)
    google.inject(user, where=lambda q: "pageToken" in q, **fault)
    assert sync(account)["created"] == 4
    calls = google.api_requests(user, "calendar.events.list")
    refused = [r for r in calls if r.status == fault["status"]]
    assert len(refused) == 1
    retried = calls[calls.index(refused[0]) + 1]
    assert retried.status == 200 and retried.query["pageToken"] == refused[0].query["pageToken"]
    if "retry_after" in fault:
        assert retried.at - refused[0].at >= fault["retry_after"]


def test_long_retry_after_goes_back_to_the_queue(google, google_settings):
    user = google.add_user()
    account = connect(user)
    google.inject(user, status=429, retry_after=120)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        sync(account)
    assert caught.value.retry_after == pytest.approx(120)
    assert time.monotonic() - started < 5  # no waiting inside the worker


def test_persistent_server_errors_become_transient(google, google_settings):
    user = google.add_user()
    account = connect(user)
    google.inject(user, status=500, times=10)
    with pytest.raises(TransientError, match="HTTP 500"):
        sync(account)
    google.clear_faults(user)


def test_slow_answer_times_out_as_transient(google, google_settings):
    """A page that does not come in time is asked for with fewer events, down to 50; one that
    does not come even then is a transient error (the run is retried later)."""
    google_settings.CALY_HTTP_TIMEOUT = 0.5
    user = google.add_user()
    account = connect(user)
    google.inject(user, status=None, delay=2, times=100)
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not answer"):
        sync(account)
    sizes = [
        int(r.query["maxResults"][0]) for r in google.api_requests(user, "calendar.events.list")
    ]
    assert sizes == [2500, 1250, 625, 312, 156, 78, 50]
    assert time.monotonic() - started < len(sizes) * 2  # each gave up at the timeout


def test_a_page_too_large_to_come_in_time_is_asked_for_smaller_and_remembered(
    google, google_settings
):
    """Pages of more than 600 events do not come within the timeout: the first sync asks
    again with smaller pages and completes; the calendar keeps the size that came in time."""
    google_settings.CALY_HTTP_TIMEOUT = 0.5
    user = google.add_user()
    for i in range(30):
        google.insert_event(user, summary=f"Meeting {i}")
    account = connect(user)
    large = {"where": lambda query: int(query["maxResults"]) > 600, "times": 100}
    google.inject(user, status=None, delay=2, **large)

    run = run_sync(account)

    assert run.state == "succeeded", run.error
    assert run.created == 30
    sizes = [
        int(r.query["maxResults"][0]) for r in google.api_requests(user, "calendar.events.list")
    ]
    assert sizes == [2500, 1250, 625, 312]
    calendar = account.calendars.get()
    assert calendar.fetch_batch == 312
    calendar.sync_token = ""  # a full listing again starts at the size that worked
    calendar.save(update_fields=["sync_token"])
    google.requests.clear()
    assert run_sync(account).state == "succeeded"
    assert [
        int(r.query["maxResults"][0])
        for r in google.api_requests(user)
        if r.method_id == "calendar.events.list"
    ] == [312]


def test_slow_but_timely_answer_is_fine(google, google_settings):
    user = google.add_user()
    google.insert_event(user, summary="Late")
    account = connect(user)
    google.inject(user, status=None, delay=0.3)
    assert sync(account)["created"] == 1


def test_budget_waits_briefly_then_hands_back(google, google_settings):
    """A user over budget: short waits happen in place, long ones become a TransientError."""
    google_settings.CALY_GOOGLE_USER_REQUESTS = 20  # burst 2, then one every 1/6 s
    google_settings.CALY_GOOGLE_USER_WINDOW_SECONDS = 3
    google_settings.CALY_GOOGLE_MAX_WAIT_SECONDS = 0.5
    user = google.add_user(page_size=1)
    for i in range(12):
        google.insert_event(user, summary=f"E{i}", start=f"2026-08-{i + 1:02d}T08:00:00Z")
    account = connect(user)
    google.set_quota(user, requests=20, window=3)
    outcome = None
    started = time.monotonic()
    while outcome is None:
        try:
            sync(account)
            outcome = "done"
        except TransientError as exc:
            assert "budget" in str(exc) and exc.retry_after > 0
            time.sleep(exc.retry_after)  # what the queue's delayed retry does
    assert time.monotonic() - started > 1.5  # throttled: 14+ requests at 6 a second
    assert len(stored(account)) == 12
    assert user.quota_rejections == 0 and user.max_in_window <= 20


# --- the client speaks the discovery document ----------------------------------------------------
def _path_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\+?[^}]+\})", template)
    regex = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts if part)
    return re.compile("^" + regex + "$")


def test_every_request_matches_a_method_of_the_discovery_document(google, google_settings):
    user = google.add_user(page_size=2)
    google.add_calendar(user, "Second")
    master = google.insert_event(
        user, summary="S", start="2026-09-07", recurrence=["RRULE:FREQ=DAILY"]
    )
    for i in range(3):
        google.insert_event(user, summary=f"E{i}", start=f"2026-09-{i + 1:02d}T08:00:00Z")
    account = connect(user)
    sync(account)
    google.cancel_instance(user, None, master["id"], "2026-09-08")
    google.expire_sync_tokens(user)
    sync(account)
    sync(account)

    document = load_discovery()
    base = "/" + document["servicePath"].lstrip("/")
    global_parameters = set(document["parameters"])
    methods = []

    def walk(resources):
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                methods.append((method, _path_regex(base + method["path"])))
            walk(resource.get("resources", {}))

    walk(document["resources"])
    sent = google.api_requests(user)
    assert {r.method_id for r in sent} >= {
        "calendar.calendarList.list",
        "calendar.events.list",
        "calendar.events.get",
    }
    for request in sent:
        candidates = [
            m
            for m, regex in methods
            if m["httpMethod"] == request.http_method and regex.match(request.path)
        ]
        assert candidates, f"no discovery method for {request.http_method} {request.path}"
        allowed = global_parameters | {name for m in candidates for name in m.get("parameters", {})}
        assert set(request.query) <= allowed, (request.path, set(request.query) - allowed)
        if "syncToken" in request.query:
            forbidden = {"timeMin", "timeMax", "orderBy", "q", "updatedMin", "iCalUID"}
            assert not forbidden & set(request.query)
        assert unquote(request.path).count("//") == 0
    assert not google.unmatched


# --- the provider on its own ------------------------------------------------------------------
def test_provider_objects_carry_the_google_id_etag_and_json(google, google_settings):
    user = google.add_user()
    event = google.insert_event(user, summary="Ünïcödé ✓", start="2026-10-01T12:00:00Z")
    provider = GoogleProvider(credentials={"refresh_token": user.refresh_token})
    try:
        (calendar,) = provider.discover()
        (batch,) = list(provider.changes(calendar, cursor=Cursor(), stored_etags=dict))
    finally:
        provider.close()
    (obj,) = batch.objects
    assert (obj.href, obj.etag) == (event["id"], event["etag"])
    assert json.loads(obj.raw)["summary"] == "Ünïcödé ✓"
    assert obj.events[0].uid == event["iCalUID"]
    assert batch.cursor is not None and batch.cursor.sync_token


def test_an_unreadable_event_is_skipped_and_named_the_rest_of_its_page_stored(
    google, google_settings
):
    user = google.add_user(page_size=3)
    good = [google.insert_event(user, summary=f"Fine {i}")["id"] for i in range(2)]
    bad = google.insert_event(user, summary="Broken")["id"]
    google.update_event(user, None, bad, summary=12345)  # Google sends strings; this is not one
    account = connect(user)
    (run,) = services.sync_request(
        user=account.owner, account=account, trigger="command", publish=False
    )

    services.sync_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert sorted(e.href for e in stored(account).values()) == sorted(good)
    ((entry),) = run.skipped
    assert entry["href"] == bad and "unreadable Google event" in entry["reason"]


def test_an_empty_listing_is_confirmed_before_everything_is_deleted(google, google_settings):
    user = google.add_user()
    ids = [google.insert_event(user, summary=f"E{i}")["id"] for i in range(3)]
    account = connect(user)
    sync(account)

    # A spurious empty answer to the full listing after a 410 deletes nothing.
    google.expire_sync_tokens(user)
    google.inject(user, status=None, empty=True, where=lambda q: "syncToken" not in q)
    with pytest.raises(TransientError, match="nothing was deleted"):
        sync(account)
    assert len(stored(account)) == 3

    # A calendar really emptied: the second listing agrees, and the events go.
    for event_id in ids:
        google.delete_event(user, None, event_id)
    google.expire_sync_tokens(user)
    assert sync(account)["deleted"] == 3
    assert not stored(account)


@pytest.mark.parametrize(
    "text",
    [
        '{"kind":"calendar#events","items":[{"id":"a","x":[1,{"y":"\\u00e9]"}]},{"id":"b"}],'
        '"nextSyncToken":"t"}',
        '{\n "items": [\n  {\n   "id": "a"\n  } ,\n  {"id": "b,]}"}\n ],\n "nextPageToken": "p"\n}\n',
        '{"nextPageToken":"p","items":[]}',
        '{"kind":"calendar#events"}',
    ],
    ids=["compact", "pretty", "empty", "no-items"],
)
def test_pages_keep_each_event_exactly_as_sent(text):
    from sync.providers.google.events import event_pages as _event_pages

    page = _event_pages.decode(text.encode())
    raw = [str(item, "utf-8") for item in page.items]
    expected = json.loads(text)
    assert [json.loads(r) for r in raw] == expected.get("items", [])
    assert all(r in text for r in raw)
    assert (page.next_page_token, page.next_sync_token) == (
        expected.get("nextPageToken", ""),
        expected.get("nextSyncToken", ""),
    )
