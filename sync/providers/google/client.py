"""One Google grant's way to the Calendar API: the client library's service, its access token,
the user's request budget, and each request run with short retries and its errors translated.

Requests are built from the discovery document that ships with google-api-python-client and
sent, as its documentation shows, through google-auth-httplib2's AuthorizedHttp (bearer token,
refresh at CALY_GOOGLE_TOKEN_URI) onto one adapter to Caly's pooled HTTP session
(`transport.Http`). Access tokens are reused across syncs until they expire. Every API request
first takes a slot from the Google user's request budget (`sync.budget`), shared by all workers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time

import google.auth.exceptions
import msgspec
from django.conf import settings
from google.oauth2.credentials import Credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from sync.backoff import backoff
from sync.budget import BudgetExhausted, budget_spend
from sync.providers.base import AuthError, ConnectError, ProviderError, TransientError
from sync.providers.google.errors import RECONNECT, provider_error, refresh_failure
from sync.providers.google.transport import BytesModel, Http

logger = logging.getLogger(__name__)

# A throttled request is retried here, at once, when the wait is short: the rest of a long
# listing need not start over. Longer waits go back to the queue as a TransientError.
INLINE_RETRIES = 2
INLINE_BACKOFF_SECONDS = 1.0
RETRY_AFTER_SPREAD = 0.25  # requests told the same Retry-After do not all return at once


# --- access tokens ----------------------------------------------------------------------------
# Access tokens live an hour; keeping them per process saves a token request on every sync.
# Keyed by a digest of the refresh token, so the cache never holds a refresh token itself.
_access_tokens: dict[str, tuple[str, dt.datetime | None]] = {}


def token_key(refresh_token: str) -> str:
    material = f"{settings.CALY_GOOGLE_CLIENT_ID}\0{refresh_token}"
    return hashlib.sha256(material.encode()).hexdigest()


# The address Google itself gave for each grant (the id of its primary calendar), by token_key:
# what the user's request budget is keyed on. Never the account's username, which its owner
# types and edits, and which may name somebody else.
_verified_addresses: dict[str, str] = {}


class Client:
    """The API as one Google grant (its refresh token) reaches it."""

    def __init__(self, *, refresh_token: str):
        self.refresh_token = refresh_token
        self._credentials: Credentials | None = None
        self._service = None

    def check_configured(self) -> None:
        if not (settings.CALY_GOOGLE_CLIENT_ID and settings.CALY_GOOGLE_CLIENT_SECRET):
            raise ConnectError(
                "Google Calendar is not set up on this Caly: set CALY_GOOGLE_CLIENT_ID and "
                "CALY_GOOGLE_CLIENT_SECRET."
            )
        if not self.refresh_token:
            raise AuthError(f"The Google account has no stored authorisation. {RECONNECT}")

    @property
    def service(self):
        if self._service is None:
            self.check_configured()
            options = {}
            if settings.CALY_GOOGLE_API_ENDPOINT:
                base = settings.CALY_GOOGLE_API_ENDPOINT.rstrip("/")
                options["api_endpoint"] = f"{base}/calendar/v3/"
            token, expiry = _access_tokens.get(token_key(self.refresh_token), (None, None))
            self._credentials = Credentials(
                token=token,
                expiry=expiry,
                refresh_token=self.refresh_token,
                token_uri=settings.CALY_GOOGLE_TOKEN_URI,
                client_id=settings.CALY_GOOGLE_CLIENT_ID,
                client_secret=settings.CALY_GOOGLE_CLIENT_SECRET,
            )
            # On a 401 AuthorizedHttp refreshes the token once and repeats the request.
            authorized = AuthorizedHttp(
                self._credentials,
                http=Http(spend_budget=self._spend_budget),
                max_refresh_attempts=1,
            )
            self._service = build(
                "calendar",
                "v3",
                static_discovery=True,
                cache_discovery=False,
                http=authorized,
                model=BytesModel(),
                client_options=options,
            )
        return self._service

    def close(self) -> None:
        # The HTTP session is shared; only the client library's service is let go.
        self._service = None

    def address_verified(self, address: str) -> None:
        """Google named the grant's user (its primary calendar): key the budget on it."""
        _verified_addresses[token_key(self.refresh_token)] = address

    def _budget_key(self) -> str:
        # Google counts requests per user: the address Google gave for this grant once it has
        # (several Caly accounts may be the same Google user), else the grant itself.
        grant = token_key(self.refresh_token)
        address = _verified_addresses.get(grant)
        if address:
            return f"google:{address.lower()}"
        return "google:grant:" + grant[:32]

    def _spend_budget(self) -> None:
        try:
            wait = budget_spend(
                key=self._budget_key(),
                requests=settings.CALY_GOOGLE_USER_REQUESTS,
                window=settings.CALY_GOOGLE_USER_WINDOW_SECONDS,
                max_wait=settings.CALY_GOOGLE_MAX_WAIT_SECONDS,
            )
        except BudgetExhausted as exc:
            raise TransientError(
                "This Google user's request budget is used up for now; "
                f"continuing in {exc.wait:.0f} s.",
                retry_after=exc.wait,
            ) from None
        if wait > 0:
            time.sleep(wait)

    def execute(
        self, request, *, what: str, decoder: msgspec.json.Decoder | None, action: str = "list"
    ):
        """Run one API request and decode its answer with `decoder` (None: no answer to read);
        failures become Caly's error kinds (see `errors.provider_error`)."""
        key = token_key(self.refresh_token)
        for attempt in range(INLINE_RETRIES + 1):
            try:
                content = request.execute()
            except google.auth.exceptions.RefreshError as exc:
                _access_tokens.pop(key, None)
                raise refresh_failure(exc) from None
            except HttpError as exc:
                failure = provider_error(exc, what=what, action=action)
            else:
                failure = None
            # The access token the request went with (refreshed, perhaps) serves the next sync.
            _access_tokens[key] = (self._credentials.token, self._credentials.expiry)
            if failure is None and decoder is None:
                return None
            if failure is None:
                try:
                    return decoder.decode(content)
                except msgspec.DecodeError as exc:
                    raise ProviderError(
                        f"Google Calendar sent an answer Caly cannot read for {what} ({exc})."
                    ) from None
            if not isinstance(failure, TransientError):
                raise failure
            wait = backoff(
                attempt=attempt,
                base=INLINE_BACKOFF_SECONDS,
                retry_after=failure.retry_after,
                spread=RETRY_AFTER_SPREAD,
            )
            if attempt == INLINE_RETRIES or wait > settings.CALY_GOOGLE_MAX_WAIT_SECONDS:
                raise failure
            logger.info("%s; retrying in %.1f s", failure, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")
