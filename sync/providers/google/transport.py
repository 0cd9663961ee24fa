"""The one HTTP object the Google libraries send through: httplib2's interface onto Caly's pooled
session, with its timeout; API requests take a slot of the user's request budget first."""

from __future__ import annotations

from collections.abc import Callable

import httplib2
import niquests
from django.conf import settings
from googleapiclient.model import JsonModel

from sync import http
from sync.providers.base import TimedOut, TransientError


class Http:
    """What `google_auth_httplib2.AuthorizedHttp` sends through, in place of `httplib2.Http`.

    AuthorizedHttp adds the bearer token and sends google-auth's token requests here too; those
    spend no budget (Google's per-user quota counts API requests). Redirects are not followed;
    HTTP errors are left to the client library to interpret.
    """

    def __init__(self, *, spend_budget: Callable[[], None]):
        self._spend_budget = spend_budget

    def request(
        self, uri, method="GET", body=None, headers=None, redirections=None, connection_type=None
    ):
        to_token_endpoint = uri == settings.CALY_GOOGLE_TOKEN_URI
        if not to_token_endpoint:
            self._spend_budget()
        headers = dict(headers or {})
        # Google compresses answers only for user agents that say "gzip".
        headers["user-agent"] = f"{http.USER_AGENT} (gzip)"
        try:
            response = http.session().request(
                method,
                uri,
                data=body,
                headers=headers,
                timeout=settings.CALY_HTTP_TIMEOUT,
                allow_redirects=False,
            )
        except niquests.exceptions.RequestException as exc:
            if to_token_endpoint:
                raise TransientError("Cannot reach Google's token endpoint.") from None
            if isinstance(exc, niquests.exceptions.Timeout):
                raise TimedOut(
                    f"Google Calendar did not answer within {settings.CALY_HTTP_TIMEOUT:g} s."
                ) from None
            raise TransientError(
                f"Cannot connect to Google Calendar ({type(exc).__name__})."
            ) from None
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
