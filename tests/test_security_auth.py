"""Who gets in: the API wants a token or a session, the dashboard a login, the admin a staff
member; POSTs that contact servers or queue work are rate-limited; Caly refuses to start
without its secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.shortcuts import resolve_url
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import make_account, make_calendar, make_event, make_user

ROOT = Path(__file__).resolve().parents[1]

# Every data endpoint, with an id that exists (the anonymous caller must not learn even that).
ENDPOINTS = [
    ("get", "/api/accounts/"),
    ("post", "/api/accounts/"),
    ("get", "/api/accounts/{account}/"),
    ("patch", "/api/accounts/{account}/"),
    ("delete", "/api/accounts/{account}/"),
    ("get", "/api/calendars/"),
    ("get", "/api/calendars/{calendar}/"),
    ("patch", "/api/calendars/{calendar}/"),
    ("post", "/api/calendars/{calendar}/rotate-feed/"),
    ("get", "/api/feed/"),
    ("post", "/api/feed/rotate/"),
    ("get", "/api/events/"),
    ("get", "/api/events/{event}/"),
    ("get", "/api/sync/"),
    ("post", "/api/sync/"),
    ("get", "/api/sync/{run}/"),
]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # These tests make users by the dozen; the production hasher's cost is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def objects(db):
    from sync.models import SyncRun

    owner = make_user("owner")
    account = make_account(owner)
    calendar = make_calendar(account)
    event = make_event(calendar)
    run = SyncRun.objects.create(account=account, trigger="api")
    return {"account": account.pk, "calendar": calendar.pk, "event": event.pk, "run": run.pk}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_api_without_credentials_is_401_json(objects, method, path):
    response = getattr(APIClient(), method)(path.format(**objects), {}, format="json")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_api_with_a_wrong_token_is_401(objects, method, path):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    response = getattr(client, method)(path.format(**objects), {}, format="json")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


def test_token_and_session_both_work(db):
    user = make_user("tina")
    token = Token.objects.create(user=user)
    by_token = APIClient()
    by_token.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert by_token.get("/api/accounts/").status_code == 200
    by_session = APIClient()
    by_session.login(username="tina", password="pw-tina")
    assert by_session.get("/api/accounts/").status_code == 200


def test_session_writes_need_the_csrf_token(db):
    """A logged-in browser cannot be made to POST by another site: no CSRF token, no write."""
    make_user("sam")
    client = APIClient(enforce_csrf_checks=True)
    client.login(username="sam", password="pw-sam")
    response = client.post("/api/sync/", {}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_schema_and_docs_are_public_and_hold_no_data(db):
    """The API description is public on purpose: it is the same for everyone."""
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/accounts/" in schema.json()["paths"]


def test_dashboard_sends_strangers_to_the_login_page(db):
    response = APIClient().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(resolve_url(django_settings.LOGIN_URL) + "?next=")


@pytest.mark.parametrize("path", ["/admin/", "/admin/calendars/account/", "/admin/sync/syncrun/"])
def test_admin_is_for_staff_only(db, path):
    make_user("plain")
    client = APIClient()
    client.login(username="plain", password="pw-plain")
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    make_user("boss", is_staff=True, is_superuser=True)
    client.login(username="boss", password="pw-boss")
    assert client.get(path).status_code == 200


def _with_rate(settings, scope: str, rate: str) -> None:
    rates = dict(django_settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **{scope: rate})
    settings.REST_FRAMEWORK = {**django_settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


def test_sync_requests_are_rate_limited_per_user(settings, api, user):
    from django.core.cache import cache

    cache.clear()
    _with_rate(settings, "sync_request", "3/minute")
    answers = [api.post("/api/sync/", {}, format="json").status_code for _ in range(4)]
    assert answers == [202, 202, 202, 429]
    limited = api.post("/api/sync/", {}, format="json")
    assert limited.json()["detail"].startswith("Request was throttled.")
    assert int(limited["Retry-After"]) > 0
    # Reading is not limited, and another user has an allowance of their own.
    assert api.get("/api/sync/").status_code == 200
    other = APIClient()
    other.force_authenticate(make_user("bob"))
    assert other.post("/api/sync/", {}, format="json").status_code == 202


def test_connecting_accounts_is_rate_limited(settings, api):
    from django.core.cache import cache

    cache.clear()
    _with_rate(settings, "account_connect", "2/minute")
    body = {"provider": "caldav", "name": "x", "url": "http://127.0.0.1:9/"}
    answers = [api.post("/api/accounts/", body, format="json").status_code for _ in range(3)]
    # The first two are tried (and fail: nothing listens there); the third is not even tried.
    assert answers == [400, 400, 429]


# --- start-up ---------------------------------------------------------------------------------
def _start(env_changes: dict) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "CALY_ENCRYPTION_KEY")
    }
    env.update({"DJANGO_DEBUG": "0", **env_changes})
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD_KEY = "x8lbs0ZcgJ0zOvHsGQ2wdkILkWqSspGMyDsz8YiP0nM="


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALY_ENCRYPTION_KEY": GOOD_KEY}, "DJANGO_SECRET_KEY is not set"),
        ({"DJANGO_SECRET_KEY": "s" * 50}, "CALY_ENCRYPTION_KEY is not set"),
        (
            {"DJANGO_SECRET_KEY": "s" * 50, "CALY_ENCRYPTION_KEY": "not-a-key-at-all"},
            "CALY_ENCRYPTION_KEY must be one or more comma-separated Fernet keys",
        ),
    ],
)
def test_without_debug_missing_secrets_stop_startup(env, message):
    result = _start(env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "not-a-key-at-all" not in result.stderr


def test_with_both_secrets_startup_proceeds():
    result = _start({"DJANGO_SECRET_KEY": "s" * 50, "CALY_ENCRYPTION_KEY": GOOD_KEY})
    assert result.returncode == 0, result.stderr
