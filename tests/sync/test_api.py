"""The accounts API (sync/api.py): what its forms offer, and the same account connected twice."""

from __future__ import annotations

import re

import pytest

from calendars.models import Account
from tests.factories import make_account

pytestmark = pytest.mark.django_db

CONNECT_FIELDS = {"provider", "name", "url", "username", "password", "refresh_token"}
SHOWN_FIELDS = {
    *("id", "provider", "name", "url", "username"),
    *("status", "last_synced_at", "last_error"),
}


def test_options_and_the_browsable_form_offer_every_field_connecting_takes(api, user):
    make_account(user)
    described = api.options("/api/accounts/")
    assert described.status_code == 200
    assert set(described.json()["actions"]["POST"]) == CONNECT_FIELDS

    page = api.get("/api/accounts/", HTTP_ACCEPT="text/html").content.decode()
    assert re.search(r'<input name="password"[^>]* type="password"', page)
    assert re.search(r'<input name="refresh_token"[^>]* type="password"', page)
    # Accounts are shown as before, without their secrets.
    (shown,) = api.get("/api/accounts/").json()["results"]
    assert set(shown) == SHOWN_FIELDS


def test_connecting_the_same_server_and_username_twice_is_400_naming_the_account(api, user):
    first = make_account(user, name="Work", url="http://127.0.0.1:1/dav/", username="me")
    body = {"provider": "caldav", "name": "Again", "username": "me", "password": "pw"}

    again = api.post("/api/accounts/", {**body, "url": "HTTP://127.0.0.1:1/dav"}, format="json")

    assert again.status_code == 400
    assert again.json() == {
        "url": [f"This server and username are already connected as account {first.pk} (“Work”)."]
    }
    assert Account.objects.filter(owner=user).count() == 1
