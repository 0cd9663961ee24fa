"""Bad input gets a 4xx with a JSON body naming the field (or the problem), never a 500, never a
half-written row, and never an echo of a secret."""

from __future__ import annotations

import pytest

from calendars.models import Account
from tests.factories import make_account, make_calendar


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _body(**overrides):
    return {"provider": "caldav", "name": "Home", "url": "http://127.0.0.1:9/", **overrides}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "provider"),
        (_body(provider="exchange"), "provider"),
        (_body(provider=["caldav"]), "provider"),
        (_body(name=None), "name"),
        (_body(name=""), "name"),
        (_body(name="n" * 201), "name"),
        (_body(name={"a": 1}), "name"),
        (_body(url="not a url"), "url"),
        (_body(url="ftp://dav.example.com/"), "url"),
        (_body(url="javascript:alert(1)"), "url"),
        (_body(url="http://x.example/" + "a" * 2000), "url"),
        (_body(url=12345), "url"),
        (_body(url=""), "url"),
        (_body(username="u" * 256), "username"),
        (_body(password="p" * 1001), "password"),
        (_body(password=["a"]), "password"),
        ({"provider": "google", "name": "G"}, "refresh_token"),
        (_body(name="nul\x00byte"), "name"),
    ],
)
def test_account_create_rejects_bad_fields(api, body, field):
    response = api.post("/api/accounts/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Account.objects.exists()


def test_credentials_inside_the_url_are_refused_without_echoing_them(api):
    response = api.post(
        "/api/accounts/",
        _body(url="https://carol:Hunter2-very-secret@dav.example.com/"),
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"url"}
    assert "own fields" in response.json()["url"][0]
    assert "Hunter2" not in response.content.decode()
    assert not Account.objects.exists()


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"provider": "caldav", "name": ', "application/json"),
        (b"\xff\xfe not utf-8", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'"just a string"', "application/json"),
        (b"null", "application/json"),
        (b'{"provider": NaN}', "application/json"),
        (b"<account/>", "application/xml"),
        (b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
        (b'{"pad": "' + b"x" * 3_000_000 + b'"}', "application/json"),
    ],
    ids=["truncated", "not-utf8", "list", "string", "null", "nan", "xml", "nested", "too-big"],
)
@pytest.mark.parametrize("path", ["/api/accounts/", "/api/sync/"])
def test_unreadable_bodies_are_4xx_json(api, path, content, content_type):
    response = api.generic("POST", path, content, content_type=content_type)
    assert 400 <= response.status_code < 500, response.content
    assert isinstance(response.json(), dict) and response.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"account": "abc"}, "account"),
        ({"account": 1.5}, "account"),
        ({"account": True}, "account"),
        ({"account": [1]}, "account"),
        ({"account": {"id": 1}}, "account"),
        ({"account": 2_000_000_000}, "account"),
        ({"account": 10**30}, "account"),
        ({"account": -1}, "account"),
    ],
)
def test_sync_request_rejects_bad_account(api, body, field):
    response = api.post("/api/sync/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/calendars/?account=abc", "account"),
        ("/api/calendars/?account=1e3", "account"),
        ("/api/events/?calendar=x", "calendar"),
        ("/api/events/?start=yesterday", "start"),
        ("/api/events/?start=2026-01-01T00:00:00", "start"),
        ("/api/events/?start=2026-13-45T00:00:00Z", "start"),
        ("/api/events/?end=2026-02-30T10:00:00Z", "end"),
        ("/api/sync/?state=exploded", "state"),
        ("/api/sync/?account=%00", "account"),
    ],
)
def test_bad_query_parameters_name_the_parameter(api, path, field):
    response = api.get(path)
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/api/accounts/99999999999999999999999/",
        "/api/calendars/-1/",
        "/api/events/abc/",
        "/api/sync/0/",
        "/api/calendars/?account=99999999999999999999999",
        "/api/sync/?account=99999999999999999999999",
    ],
)
def test_unknown_or_impossible_ids_are_404_or_empty(api, path):
    response = api.get(path)
    assert response.status_code in (200, 404), response.content
    if response.status_code == 200:
        assert response.json()["results"] == []
    else:
        assert response.json() == {"detail": "Not found."}


def test_unknown_api_paths_and_methods_answer_json(api):
    missing = api.get("/api/no-such-thing/")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not found."}
    wrong_method = api.put("/api/sync/", {}, format="json")
    assert wrong_method.status_code == 405
    assert "detail" in wrong_method.json()


def test_calendar_patch_takes_only_a_boolean_selected(api, user):
    calendar = make_calendar(make_account(user))
    for bad in ({"selected": "perhaps"}, {"selected": [True]}, {"selected": None}):
        response = api.patch(f"/api/calendars/{calendar.pk}/", bad, format="json")
        assert response.status_code == 400
        assert "selected" in response.json()
    calendar.refresh_from_db()
    assert calendar.selected is True


def test_account_patch_rejects_over_long_fields(api, user):
    account = make_account(user, name="Before")
    for body, field in (({"name": "n" * 201}, "name"), ({"password": "p" * 1001}, "password")):
        response = api.patch(f"/api/accounts/{account.pk}/", body, format="json")
        assert response.status_code == 400
        assert field in response.json()
    account.refresh_from_db()
    assert (account.name, account.credentials) == ("Before", {})
