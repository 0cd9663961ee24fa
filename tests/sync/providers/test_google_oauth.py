"""Connecting Google from the dashboard: consent redirect, callback with state and PKCE, the
code exchanged at the (fake) token endpoint, and the account created by the connect service."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.messages import get_messages
from django.template import Context, Template

from calendars.models import Account
from sync import services
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def google_settings(settings, google):
    for name, value in google.settings().items():
        setattr(settings, name, value)
    yield settings
    google.consent_user = None


@pytest.fixture
def browser(client, user):
    client.force_login(user)
    return client


def start(browser, path="/google/connect/") -> dict:
    response = browser.get(path)
    assert response.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(response["Location"]).query).items()}


def consent(google, browser, path="/google/connect/"):
    """The user clicks through the (fake) consent page; returns the callback response."""
    response = browser.get(path)
    answer = requests.get(response["Location"], allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    back = urlsplit(answer.headers["Location"])
    assert back.path == "/google/callback/"
    return browser.get(f"{back.path}?{back.query}")


def flash(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_consent_redirect_carries_state_pkce_and_offline_access(browser, google, google_settings):
    response = browser.get("/google/connect/")
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == google.auth_uri
    params = start(browser)
    assert params["client_id"] == google.client_id
    assert params["redirect_uri"] == "http://testserver/google/callback/"
    assert params["response_type"] == "code"
    assert params["scope"] == (
        "https://www.googleapis.com/auth/calendar.readonly "
        "https://www.googleapis.com/auth/calendar.events"
    )
    assert (params["access_type"], params["prompt"]) == ("offline", "consent")
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["state"] == browser.session["google_oauth"]["state"]
    assert google.client_secret not in response["Location"]


def test_callback_connects_the_account(browser, user, google, google_settings):
    google_user = google.add_user()
    google.add_calendar(google_user, "Work")
    google.consent_user = google_user

    response = consent(google, browser)

    assert response.status_code == 302 and response["Location"] == "/"
    account = Account.objects.get(owner=user)
    assert (account.provider, account.username) == ("google", google_user.email)
    assert account.name == f"Google ({google_user.email})"
    assert account.credentials == {"refresh_token": google_user.refresh_token}
    assert account.calendars.count() == 2
    assert any("Connected" in m for m in flash(response))
    assert "google_oauth" not in browser.session  # the state works once


def test_callback_with_a_foreign_state_is_refused(browser, user, google, google_settings):
    google.consent_user = google.add_user()
    response = browser.get("/google/connect/")
    answer = requests.get(response["Location"], allow_redirects=False, timeout=10)
    back = parse_qs(urlsplit(answer.headers["Location"]).query)

    forged = browser.get(f"/google/callback/?code={back['code'][0]}&state=not-the-state")
    assert forged.status_code == 400
    # The genuine state was spent on the forged attempt: replaying it is refused as well.
    replay = browser.get(f"/google/callback/?code={back['code'][0]}&state={back['state'][0]}")
    assert replay.status_code == 400
    assert not Account.objects.filter(owner=user).exists()


def test_callback_nobody_asked_for_is_refused(browser, google_settings):
    assert browser.get("/google/callback/?code=x&state=y").status_code == 400


def test_declined_consent_connects_nothing(browser, user, google, google_settings):
    google.consent_user = None  # the user clicked "Cancel"
    response = consent(google, browser)
    assert response.status_code == 302
    assert any("access_denied" in m for m in flash(response))
    assert not Account.objects.filter(owner=user).exists()


def test_reconnect_reactivates_the_account_with_the_new_grant(
    browser, user, google, google_settings
):
    google_user = google.add_user()
    account = services.account_connect(
        owner=user,
        provider="google",
        name="Mine",
        credentials={"refresh_token": google_user.refresh_token},
    )
    google.revoke(google_user)
    Account.objects.filter(pk=account.pk).update(status="needs_reauth", last_error="revoked")
    new_token = google.new_refresh_token(google_user)
    google.consent_user = google_user

    params = start(browser, f"/google/connect/{account.pk}/")
    assert params["login_hint"] == google_user.email
    response = consent(google, browser, f"/google/connect/{account.pk}/")

    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.status, account.last_error) == ("active", "")
    assert account.credentials == {"refresh_token": new_token}
    assert Account.objects.filter(owner=user).count() == 1


def test_reconnect_as_another_google_user_is_refused(browser, user, google, google_settings):
    google_user = google.add_user()
    account = services.account_connect(
        owner=user,
        provider="google",
        name="Mine",
        credentials={"refresh_token": google_user.refresh_token},
    )
    google.consent_user = google.add_user()
    response = consent(google, browser, f"/google/connect/{account.pk}/")
    assert any("Connect it as a new account" in m for m in flash(response))
    account.refresh_from_db()
    assert account.credentials == {"refresh_token": google_user.refresh_token}


def test_someone_elses_account_cannot_be_reconnected(browser, google, google_settings):
    other = services.account_connect(
        owner=make_user(),
        provider="google",
        name="Theirs",
        credentials={"refresh_token": google.add_user().refresh_token},
    )
    assert browser.get(f"/google/connect/{other.pk}/").status_code == 404


def test_without_a_client_the_page_says_what_to_configure_and_there_is_no_link(browser, settings):
    settings.CALY_GOOGLE_CLIENT_ID = ""
    settings.CALY_GOOGLE_CLIENT_SECRET = "set"
    settings.CALY_GOOGLE_REDIRECT_URI = ""
    page = browser.get("/google/connect/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Google Calendar is not set up" in text
    assert "CALY_GOOGLE_CLIENT_ID" in text and "CALY_GOOGLE_CLIENT_SECRET" in text
    assert "http://testserver/google/callback/" in text  # the redirect URI to register
    assert "Not set now: <code>CALY_GOOGLE_CLIENT_ID</code>." in text
    rendered = Template("{% load google_oauth %}[{% google_connect_link %}]").render(Context())
    assert rendered.replace("\n", "") == "[]"


def test_dashboard_snippet_links_to_the_flow(google_settings):
    rendered = Template("{% load google_oauth %}{% google_connect_link %}").render(Context())
    assert 'href="/google/connect/"' in rendered and "Connect Google Calendar" in rendered
