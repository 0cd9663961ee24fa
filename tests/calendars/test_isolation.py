"""A user reaches only their own accounts, calendars, events and runs.

Every endpoint and method, given another user's id, answers exactly what it answers for an id
that does not exist (404 "Not found.", or an empty list for a list filter), changes nothing and
shows nothing. The one body field that names an object, `account` in POST /api/sync/, is
validated like any field: a 400 naming `account`, again the same as for an id that does not exist.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from calendars.models import Account, Calendar, Event
from sync.models import SyncRun
from tests.factories import make_account, make_calendar, make_event, make_user

MISSING = 2_000_000_000


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _objects(owner, name: str) -> dict:
    account = make_account(owner, name=f"{name}'s account", username=f"{name}-login")
    calendar = make_calendar(account, name=f"{name}'s calendar")
    event = make_event(calendar, summary=f"{name}'s secret meeting")
    run = SyncRun.objects.create(
        account=account, trigger="api", state="failed", error=f"{name}'s error"
    )
    return {"account": account.pk, "calendar": calendar.pk, "event": event.pk, "run": run.pk}


@pytest.fixture
def alice_and_bob(db):
    alice, bob = make_user("alice"), make_user("bob")
    client = APIClient()
    client.force_authenticate(alice)
    return client, _objects(alice, "alice"), _objects(bob, "bob")


# (method, path template, body): every call that names an object by its id in the URL.
BY_ID = [
    ("get", "/api/accounts/{account}/", None),
    ("patch", "/api/accounts/{account}/", {"name": "mine now", "password": "x"}),
    ("delete", "/api/accounts/{account}/", None),
    ("get", "/api/calendars/{calendar}/", None),
    ("patch", "/api/calendars/{calendar}/", {"selected": False}),
    ("post", "/api/calendars/{calendar}/rotate-feed/", None),
    ("get", "/api/events/{event}/", None),
    ("get", "/api/sync/{run}/", None),
]


def _call(client, method, path, body):
    return (
        getattr(client, method)(path, body, format="json")
        if body
        else getattr(client, method)(path)
    )


@pytest.mark.parametrize(("method", "template", "body"), BY_ID)
def test_another_users_id_is_not_found_like_a_missing_one(alice_and_bob, method, template, body):
    client, mine, bobs = alice_and_bob
    other = _call(client, method, template.format(**bobs), body)
    missing = _call(client, method, template.format(**dict.fromkeys(bobs, MISSING)), body)
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json() == {"detail": "Not found."}
    # The owner's call still works, so the 404 is about ownership, not the call itself.
    assert _call(client, method, template.format(**mine), body).status_code in (200, 204)


def test_nothing_of_bobs_changed_or_went_away(alice_and_bob):
    client, _, bobs = alice_and_bob
    for method, template, body in BY_ID:
        _call(client, method, template.format(**bobs), body)
    account = Account.objects.get(pk=bobs["account"])
    assert (account.name, account.credentials) == ("bob's account", {})
    calendar = Calendar.objects.get(pk=bobs["calendar"])
    assert (calendar.selected, calendar.feed_secret) == (True, None)
    assert Event.objects.filter(pk=bobs["event"]).exists()


@pytest.mark.parametrize(
    "path",
    [
        "/api/accounts/",
        "/api/calendars/",
        "/api/calendars/?account={account}",
        "/api/events/",
        "/api/events/?calendar={calendar}",
        "/api/events/?calendar={calendar}&start=2026-01-01T00:00:00Z&end=2026-03-01T00:00:00Z",
        "/api/sync/",
        "/api/sync/?account={account}",
        "/api/sync/?account={account}&state=failed",
    ],
)
def test_lists_never_show_another_users_data(alice_and_bob, path):
    client, mine, bobs = alice_and_bob
    response = client.get(path.format(**bobs))
    assert response.status_code == 200
    text = response.content.decode()
    assert "bob" not in text
    # Filtering by bob's id looks exactly like filtering by an id that does not exist.
    if "{" in path:
        assert response.json()["results"] == []
        missing = client.get(path.format(**dict.fromkeys(bobs, MISSING)))
        assert missing.json() == response.json()
    else:
        assert response.json()["results"], "alice sees her own objects"


def test_sync_request_for_another_users_account_is_400_like_a_missing_one(alice_and_bob):
    client, _, bobs = alice_and_bob
    other = client.post("/api/sync/", {"account": bobs["account"]}, format="json")
    missing = client.post("/api/sync/", {"account": MISSING}, format="json")
    assert other.status_code == missing.status_code == 400
    assert set(other.json()) == {"account"}
    # Same words, only the number differs: nothing tells bob's account from no account.
    assert other.json()["account"][0].replace(str(bobs["account"]), "N") == missing.json()[
        "account"
    ][0].replace(str(MISSING), "N")
    assert not SyncRun.objects.filter(account_id=bobs["account"], state="queued").exists()


def test_sync_everything_queues_only_ones_own_accounts(alice_and_bob):
    client, mine, bobs = alice_and_bob
    response = client.post("/api/sync/", {}, format="json")
    assert response.status_code == 202
    assert [r["account"] for r in response.json()["runs"]] == [mine["account"]]


def test_dashboard_lists_only_ones_own_accounts(alice_and_bob):
    client, _, _ = alice_and_bob
    from django.test import Client

    browser = Client()
    browser.login(username="alice", password="pw-alice")
    page = browser.get("/").content.decode()
    assert "alice&#x27;s account" in page or "alice's account" in page
    assert "bob" not in page
