"""How google-api-python-client and google-auth send their requests: through Caly's pooled
HTTP session, with its timeout, each request taking a slot of the user's request budget."""

from __future__ import annotations

import hashlib
import logging

import google.auth.exceptions
import google.auth.transport
import httplib2
import niquests
from django.conf import settings
from googleapiclient.model import JsonModel

from sync import http
from sync.providers.base import Provider, TransientError

logger = logging.getLogger(__name__)


def token_key(refresh_token: str) -> str:
    material = f"{settings.CALY_GOOGLE_CLIENT_ID}\0{refresh_token}"
    return hashlib.sha256(material.encode()).hexdigest()


class _TokenResponse(google.auth.transport.Response):
    def __init__(self, response):
        self._status = response.status_code
        self._headers = dict(response.headers)
        self._data = response.content or b""

    @property
    def status(self):
        return self._status

    @property
    def headers(self):
        return self._headers

    @property
    def data(self):
        return self._data


def _send(method: str, url: str, *, body, headers, timeout: float | None = None):
    """One request over Caly's pooled session, with its timeout; redirects are not followed."""
    return http.session().request(
        method,
        url,
        data=body,
        headers=headers,
        timeout=timeout or settings.CALY_HTTP_TIMEOUT,
        allow_redirects=False,
    )


class TokenTransport(google.auth.transport.Request):
    """google-auth's way of reaching the token endpoint, over Caly's session with its timeout."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        try:
            response = _send(method, url, body=body, headers=headers, timeout=timeout)
        except niquests.exceptions.RequestException as exc:
            raise google.auth.exceptions.TransportError(
                f"cannot reach the token endpoint ({type(exc).__name__})"
            ) from None
        return _TokenResponse(response)


# --- the transport googleapiclient sends through ----------------------------------------------
class Transport:
    """The `http` object googleapiclient calls: budget, bearer token, Caly's session, timeout.

    It answers like httplib2 (a `Response` with `.status`, and the body), which is all the
    client library needs; HTTP errors are left to the caller to interpret.
    """

    def __init__(self, provider: Provider):
        self._provider = provider

    def request(
        self, uri, method="GET", body=None, headers=None, redirections=None, connection_type=None
    ):
        provider = self._provider
        headers = dict(headers or {})
        # Google compresses answers only for user agents that say "gzip".
        headers["user-agent"] = f"{http.USER_AGENT} (gzip)"
        for attempt in range(2):
            provider._spend_budget()
            token = provider._access_token()
            headers["authorization"] = f"Bearer {token}"
            try:
                response = _send(method, uri, body=body, headers=headers)
            except niquests.exceptions.Timeout:
                raise TransientError(
                    f"Google Calendar did not answer within {settings.CALY_HTTP_TIMEOUT:g} s."
                ) from None
            except niquests.exceptions.RequestException as exc:
                raise TransientError(
                    f"Cannot connect to Google Calendar ({type(exc).__name__})."
                ) from None
            if response.status_code == 401 and attempt == 0:
                # Revoked or expired early: refresh once; a second 401 is the caller's to judge.
                provider._forget_token(token)
                continue
            break
        info = {name.lower(): value for name, value in response.headers.items()}
        info["status"] = str(response.status_code)
        result = httplib2.Response(info)
        result.reason = response.reason or ""
        return result, response.content or b""


# --- responses --------------------------------------------------------------------------------
# Answers are parsed by msgspec into the few fields Caly reads. A page of events keeps each
# event as the exact JSON text Google sent (msgspec.Raw), which becomes the event's stored
# source without re-encoding, and is decoded one event at a time, so one unreadable event is
# skipped on its own.
class BytesModel(JsonModel):
    """googleapiclient's JSON model (alt=json, the same headers), handing over the body as is."""

    def deserialize(self, content):
        return content
