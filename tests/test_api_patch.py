"""A PATCH writes what it changes and nothing else: what a sync or an administrator stored while
the request was being handled stays as they stored it. What cannot change is a 400 naming it; a
new account URL is checked with the server first."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from django.db import connection
from django.utils.dateparse import parse_datetime

from calendars.api import CalendarViewSet
from calendars.models import Account, Calendar
from sync.api import AccountViewSet
from tests.factories import make_account, make_calendar

pytestmark = pytest.mark.django_db(transaction=True)

SYNCED_AT = dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)


def meanwhile(monkeypatch, viewset, write) -> None:
    """Run `write` after the PATCH has read its row and before it writes, from a connection of
    its own and committed, as a worker or an administrator would."""
    read = viewset.get_object

    def get_object(self):
        found = read(self)

        def elsewhere():
            try:
                write()
            finally:
                connection.close()

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        return found

    monkeypatch.setattr(viewset, "get_object", get_object)


def test_renaming_an_account_keeps_what_a_sync_recorded_meanwhile(api, user, monkeypatch):
    account = make_account(user)
    meanwhile(
        monkeypatch,
        AccountViewSet,
        lambda: Account.objects.filter(pk=account.pk).update(
            status=Account.Status.NEEDS_REAUTH,
            last_error="The CalDAV server refused the username or password.",
            last_synced_at=SYNCED_AT,
        ),
    )

    response = api.patch(f"/api/accounts/{account.pk}/", {"name": "Work"}, format="json")

    assert response.status_code == 200, response.json()
    shown = api.get(f"/api/accounts/{account.pk}/").json()
    assert shown["name"] == "Work"
    assert shown["status"] == "needs_reauth"
    assert shown["last_error"] == "The CalDAV server refused the username or password."
    assert parse_datetime(shown["last_synced_at"]) == SYNCED_AT


def test_new_credentials_leave_an_account_an_administrator_disabled_meanwhile_disabled(
    api, user, monkeypatch
):
    account = make_account(user, status=Account.Status.NEEDS_REAUTH)
    meanwhile(
        monkeypatch,
        AccountViewSet,
        lambda: Account.objects.filter(pk=account.pk).update(status=Account.Status.DISABLED),
    )

    response = api.patch(f"/api/accounts/{account.pk}/", {"password": "new-one"}, format="json")

    assert response.status_code == 200, response.json()
    assert api.get(f"/api/accounts/{account.pk}/").json()["status"] == "disabled"
    account.refresh_from_db()
    assert account.credentials == {"password": "new-one"}


def test_deselecting_a_calendar_keeps_the_cursor_a_sync_stored_meanwhile(api, user, monkeypatch):
    calendar = make_calendar(make_account(user), sync_token="token-1", ctag="ctag-1")
    meanwhile(
        monkeypatch,
        CalendarViewSet,
        lambda: Calendar.objects.filter(pk=calendar.pk).update(
            sync_token="token-2", ctag="ctag-2", last_synced_at=SYNCED_AT
        ),
    )

    response = api.patch(f"/api/calendars/{calendar.pk}/", {"selected": False}, format="json")

    assert response.status_code == 200, response.json()
    shown = api.get(f"/api/calendars/{calendar.pk}/").json()
    assert shown["selected"] is False
    assert parse_datetime(shown["last_synced_at"]) == SYNCED_AT
    # The next sync asks for the changes since the sync that ran, not since the one before it.
    calendar.refresh_from_db()
    assert (calendar.sync_token, calendar.ctag) == ("token-2", "ctag-2")


def test_a_patch_of_what_cannot_change_is_400_naming_it_and_changes_nothing(api, user):
    caldav = make_account(user, name="Home", username="me")
    google = make_account(user, provider="google", name="Mine", url="", username="me@example.com")

    for account, body, fields in (
        (
            caldav,
            {"provider": "google", "colour": "red", "name": "Renamed"},
            {"provider", "colour"},
        ),
        (google, {"username": "someone-else@example.com"}, {"username"}),
        (google, {"url": "http://127.0.0.1:1/"}, {"url"}),
        (google, {"password": "secret"}, {"password"}),
        (caldav, {"refresh_token": "1//token"}, {"refresh_token"}),
    ):
        response = api.patch(f"/api/accounts/{account.pk}/", body, format="json")
        assert response.status_code == 400, body
        assert set(response.json()) == fields

    shown = {a["id"]: a for a in api.get("/api/accounts/").json()["results"]}
    assert (shown[caldav.pk]["name"], shown[caldav.pk]["provider"]) == ("Home", "caldav")
    assert shown[google.pk]["username"] == "me@example.com"
    assert Account.objects.get(pk=google.pk).credentials == {}


def test_a_patch_to_the_url_of_an_account_already_connected_is_400_naming_it(api, user):
    work = make_account(user, name="Work", url="http://127.0.0.1:1/dav/", username="me")
    other = make_account(user, name="Other", url="http://127.0.0.1:2/", username="me")

    response = api.patch(
        f"/api/accounts/{other.pk}/", {"url": "http://127.0.0.1:1/dav"}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {
        "url": [f"This server and username are already connected as account {work.pk} (“Work”)."]
    }
    assert api.get(f"/api/accounts/{other.pk}/").json()["url"] == "http://127.0.0.1:2/"


def test_a_new_url_is_checked_with_the_server_and_its_calendar_home_found_again(
    api, user, radicale
):
    name = f"cal-{uuid.uuid4().hex[:8]}"
    radicale.make_calendar(name)
    account = make_account(
        user,
        url="http://127.0.0.1:1/",
        username=radicale.user,
        credentials={"password": radicale.password},
        home_url="http://127.0.0.1:1/gone/",
    )
    path = f"/api/accounts/{account.pk}/"

    unreachable = api.patch(path, {"url": "http://127.0.0.1:9/"}, format="json")
    assert unreachable.status_code == 400
    assert set(unreachable.json()) == {"url"}
    assert api.get(path).json()["url"] == "http://127.0.0.1:1/"

    moved = api.patch(path, {"url": radicale.base_url + "/"}, format="json")

    assert moved.status_code == 200, moved.json()
    assert api.get(path).json()["url"] == radicale.base_url + "/"
    account.refresh_from_db()
    assert account.home_url == radicale.home_url
    # The server's calendars are listed, ready for the next sync.
    listed = api.get(f"/api/calendars/?account={account.pk}").json()["results"]
    assert any(c["url"].endswith(f"/{name}/") for c in listed)
    radicale.delete_calendar(name)
