"""Connecting a Google account from the dashboard: the OAuth 2.0 web flow (consent, callback).

The consent redirect carries a random `state` kept in the session and a PKCE challenge; the
callback accepts only that state, exchanges the code at CALY_GOOGLE_TOKEN_URI, and connects the
account through the same service as `POST /api/accounts/`. Only the refresh token is kept,
encrypted with the account. Available when CALY_GOOGLE_CLIENT_ID and _SECRET are set; until
then /google/connect/ says what to configure.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from urllib.parse import urlencode

import niquests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from calendars import selectors
from calendars.models import Account
from sync import http, services
from sync.providers.base import ProviderError

logger = logging.getLogger(__name__)

SESSION_KEY = "google_oauth"


def google_oauth_enabled() -> bool:
    return bool(settings.CALY_GOOGLE_CLIENT_ID and settings.CALY_GOOGLE_CLIENT_SECRET)


def _redirect_uri(request) -> str:
    return settings.CALY_GOOGLE_REDIRECT_URI or request.build_absolute_uri(
        reverse("google-callback")
    )


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@login_required
@require_GET
def google_connect(request, account_id: int | None = None):
    """Send the user to Google's consent page (to connect a new account, or reconnect one);
    without an OAuth client configured, a page saying what to configure."""
    if not google_oauth_enabled():
        return render(
            request,
            "sync/google_setup.html",
            {
                "missing": [
                    name
                    for name in ("CALY_GOOGLE_CLIENT_ID", "CALY_GOOGLE_CLIENT_SECRET")
                    if not getattr(settings, name)
                ],
                "redirect_uri": _redirect_uri(request),
            },
        )
    account = None
    if account_id is not None:
        account = get_object_or_404(
            selectors.accounts_for_user(user=request.user),
            pk=account_id,
            provider=Account.Provider.GOOGLE,
        )
    from sync.providers.google import SCOPE  # the vendor library loads on first use only

    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    request.session[SESSION_KEY] = {"state": state, "verifier": verifier, "account": account_id}
    params = {
        "client_id": settings.CALY_GOOGLE_CLIENT_ID,
        "redirect_uri": _redirect_uri(request),
        "response_type": "code",
        "scope": SCOPE,
        # A refresh token, every time: without one Caly could sync for an hour only.
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "state": state,
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
    }
    if account is not None and account.username:
        params["login_hint"] = account.username
    return redirect(f"{settings.CALY_GOOGLE_AUTH_URI}?{urlencode(params)}")


class _ExchangeFailed(Exception):
    pass


def _exchange(request, code: str, verifier: str) -> str:
    """The authorization code → a refresh token (the access token is left to expire)."""
    try:
        response = http.session().post(
            settings.CALY_GOOGLE_TOKEN_URI,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": _redirect_uri(request),
                "client_id": settings.CALY_GOOGLE_CLIENT_ID,
                "client_secret": settings.CALY_GOOGLE_CLIENT_SECRET,
                "code_verifier": verifier,
            },
            headers={"Accept": "application/json"},
            timeout=settings.CALY_HTTP_TIMEOUT,
            allow_redirects=False,
        )
    except niquests.exceptions.RequestException as exc:
        raise _ExchangeFailed(f"Google could not be reached ({type(exc).__name__}).") from None
    except ProviderError as exc:  # too slow, too big, unreadable: already in words
        raise _ExchangeFailed(f"Google's answer could not be used: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code != 200:
        error = str(body.get("error") or f"HTTP {response.status_code}")[:100]
        raise _ExchangeFailed(f"Google refused the sign-in ({error}).")
    refresh_token = body.get("refresh_token")
    if not refresh_token:
        raise _ExchangeFailed(
            "Google granted no offline access (no refresh token); remove Caly from your Google "
            "account's third-party access and connect again."
        )
    return str(refresh_token)


@login_required
@require_GET
def google_callback(request):
    """Google sends the user back here with a code (or an error) and the state we issued."""
    pending = request.session.pop(SESSION_KEY, None)
    state = request.GET.get("state", "")
    if not pending or not secrets.compare_digest(state, pending.get("state", "")):
        # Not the answer to a consent this browser asked for: possibly a forged link.
        return HttpResponseBadRequest(
            "This Google sign-in was not started here or has already been used. "
            "Start again from the dashboard."
        )
    if "error" in request.GET or not request.GET.get("code"):
        error = request.GET.get("error", "no code")[:100]
        messages.warning(request, f"Google Calendar was not connected: {error}.")
        return redirect("dashboard")
    try:
        refresh_token = _exchange(request, request.GET["code"], pending["verifier"])
    except _ExchangeFailed as exc:
        messages.error(request, f"Google Calendar was not connected: {exc}")
        return redirect("dashboard")
    credentials = {"refresh_token": refresh_token}
    try:
        if pending.get("account") is not None:
            _reconnect(request, pending["account"], credentials)
        else:
            account = services.account_connect(
                owner=request.user,
                provider=Account.Provider.GOOGLE,
                name="Google Calendar",
                credentials=credentials,
            )
            if account.username:
                services.account_update(account=account, name=f"Google ({account.username})")
            messages.success(request, f"Connected {account.name}.")
    except ProviderError as exc:
        messages.error(request, f"Google Calendar was not connected: {exc}")
    return redirect("dashboard")


def _reconnect(request, account_id: int, credentials: dict) -> None:
    account = get_object_or_404(
        selectors.accounts_for_user(user=request.user),
        pk=account_id,
        provider=Account.Provider.GOOGLE,
    )
    # The service checks the grant is the same Google user's before storing it.
    services.account_update(account=account, credentials=credentials)
    messages.success(request, f"Reconnected {account.name}.")
