"""The dashboard as served: sign-in, only one's own accounts, and what each status asks of a person.

Its live behaviour in a real browser is in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.test import Client
from django.utils import timezone

from tests.factories import make_account, make_calendar, make_event, make_user

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def account_block(html: str, account) -> str:
    match = re.search(rf'<tbody class="account" id="account-{account.pk}".*?</tbody>', html, re.S)
    assert match, f"account {account.pk} not on the page"
    return match.group(0)


def visible_notices(block: str) -> list[str]:
    return re.findall(r'<tr class="notice[^"]*" data-when="(\w+)">', block)


def test_signing_in_is_required_and_works():
    response = Client().get("/")
    assert response.status_code == 302 and response.url == "/login/?next=/"
    make_user("ivan")
    client = Client()
    wrong = client.post("/login/", {"username": "ivan", "password": "nope"})
    assert "did not match" in wrong.text
    right = client.post("/login/", {"username": "ivan", "password": "pw-ivan", "next": "/"})
    assert right.status_code == 302 and right.url == "/"
    assert client.get("/").status_code == 200
    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_each_status_says_what_to_do(settings):
    settings.CALY_RESYNC_MINUTES = 15
    user = make_user("judy")
    fine = make_account(user, name="Fine", last_synced_at=timezone.now() - dt.timedelta(minutes=5))
    make_event(make_calendar(fine))
    failing = make_account(user, name="Failing", last_error="Cannot reach dav.example.com.")
    google = make_account(user, name="Work", provider="google", status="needs_reauth")
    caldav = make_account(user, name="Fastmail", username="judy@fm", status="needs_reauth")
    off = make_account(user, name="Off", status="disabled")
    make_account(make_user("mallory"), name="Not judy's")

    html = signed_in(user).get("/").text

    assert "Not judy&#x27;s" not in html and "Not judy's" not in html
    block = account_block(html, fine)
    assert visible_notices(block) == []
    assert re.search(r'class="events">1<', block)
    assert re.search(r'class="next-sync">in (9|10)\xa0minutes<', block)
    block = account_block(html, failing)
    assert visible_notices(block) == ["error"]
    assert 'The last sync failed: <span class="last-error">Cannot reach dav.example.com.' in block
    block = account_block(html, google)
    assert visible_notices(block) == ["needs_reauth"]
    assert "Reconnect your Google account" in block
    assert "reconnect-link" not in block  # Google sign-in is not set up here: no dead link
    assert re.search(r'class="sync-now" data-account="\d+" disabled', block)
    assert 'class="next-sync">paused until you reconnect<' in block
    block = account_block(html, caldav)
    assert visible_notices(block) == ["needs_reauth"]
    assert "rejected the password Caly has for judy@fm" in block
    assert 'name="password"' in block
    assert visible_notices(account_block(html, off)) == ["disabled"]
    assert "every 15 minutes" in html


def test_switching_off_the_periodic_task_shows_on_the_dashboard():
    from django_celery_beat.models import PeriodicTask

    user = make_user("ken")
    make_account(user)
    assert "syncs each account by itself every" in signed_in(user).get("/").text
    PeriodicTask.objects.filter(task="sync.resync_stale").update(enabled=False)
    assert "Automatic syncing is switched off" in signed_in(user).get("/").text


def test_a_google_account_links_to_its_reconnect_page_when_google_is_set_up(settings):
    settings.CALY_GOOGLE_CLIENT_ID = "client-id.apps.example"
    settings.CALY_GOOGLE_CLIENT_SECRET = "client-secret"
    user = make_user("lena")
    google = make_account(user, name="Work", provider="google", status="needs_reauth")

    html = signed_in(user).get("/").text

    block = account_block(html, google)
    assert f'class="reconnect-link" href="/google/connect/{google.pk}/"' in block
    assert "Reconnect your Google account</a>" in block
    assert 'href="/google/connect/"' in html  # and a new one can be connected


def test_calendars_the_server_left_out_are_named_until_the_next_sync_decides():
    user = make_user("olga")
    account = make_account(user, name="Fastmail")
    make_calendar(account, name="Home")
    left_out = make_calendar(account, name="Work", missing_since=timezone.now())
    make_event(left_out)
    other = make_account(user, name="Other")

    html = signed_in(user).get("/").text

    block = account_block(html, account)
    assert re.findall(r'class="missing-calendar">([^<]*)<', block) == ["Work"]
    assert "Caly keeps it with its events; the next sync deletes it unless" in block
    assert visible_notices(block) == []
    assert "missing-calendar" not in account_block(html, other)


def test_sync_now_on_the_dashboard_is_recorded_as_the_dashboard():
    """The page's own endpoint takes the signed-in session (with its CSRF token) only; the API
    stays `api`, whoever calls it."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from sync.models import SyncRun

    user = make_user("nina")
    account = make_account(user, name="Home")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/")
    token = re.search(r'id="csrf-token" value="([^"]+)"', page.text).group(1)

    refused = client.post(
        "/dashboard/sync/", {"account": account.pk}, content_type="application/json"
    )
    assert refused.status_code == 403 and not SyncRun.objects.exists()

    answer = client.post(
        "/dashboard/sync/",
        {"account": account.pk},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert answer.status_code == 202
    (run,) = answer.json()["runs"]
    assert run["trigger"] == "dashboard" and run["state"] == "queued"
    assert SyncRun.objects.get(pk=run["id"]).trigger == SyncRun.Trigger.DASHBOARD

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert api.post("/dashboard/sync/", {"account": account.pk}, format="json").status_code in (
        401,
        403,
    )
    other = make_account(make_user("oscar"))
    mine_only = client.post(
        "/dashboard/sync/",
        {"account": other.pk},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert mine_only.status_code == 400 and "account" in mine_only.json()


def shown(html: str, column: str) -> list[str]:
    """The recent runs' cells of one column (the empty row template left out)."""
    return [text for text in re.findall(rf'class="{column}">([^<]*)<', html) if text]


def test_runs_say_what_changed_in_words():
    from sync.models import SyncRun

    user = make_user("pia")
    account = make_account(user, name="Home")
    done = {"state": "succeeded", "started_at": timezone.now(), "finished_at": timezone.now()}
    SyncRun.objects.create(account=account, trigger="schedule", calendars_total=2, **done)
    SyncRun.objects.create(
        account=account, trigger="dashboard", events_processed=1, updated=1, **done
    )
    SyncRun.objects.create(
        account=account, trigger="api", events_processed=4, created=3, deleted=1, **done
    )

    html = signed_in(user).get("/").text

    assert shown(html, "progress") == [
        "4 events read",
        "1 event read",
        "nothing new to read",
    ]
    assert shown(html, "result") == [
        "3 events created, 1 deleted",
        "1 event updated",
        "no change",
    ]
    assert shown(html, "trigger") == ["API", "Dashboard", "Schedule"]


def test_an_account_added_on_the_page_gets_its_rows_as_served():
    user = make_user("quinn")
    mine = make_account(user, name="Home")
    other = make_account(make_user("rita"), name="Rita's")
    client = signed_in(user)

    block = client.get(f"/dashboard/accounts/{mine.pk}/").text

    assert account_block(block, mine) == account_block(client.get("/").text, mine)
    assert client.get(f"/dashboard/accounts/{other.pk}/").status_code == 404
    assert Client().get(f"/dashboard/accounts/{mine.pk}/").status_code == 302
