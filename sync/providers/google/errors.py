"""Google's errors, turned into Caly's provider errors (transient, auth, readable)."""

from __future__ import annotations

import json
import logging

import google.auth.exceptions
from googleapiclient.errors import HttpError

from sync.backoff import retry_after_seconds
from sync.providers.base import AuthError, ProviderError, TransientError

logger = logging.getLogger(__name__)

RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
DAILY_LIMIT_REASONS = {"dailyLimitExceeded", "quotaExceeded"}
SCOPE_REASONS = {"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}
RECONNECT = "Reconnect the Google account in Caly."


class SyncTokenExpired(ProviderError):
    """HTTP 410: Google no longer knows the sync token; the calendar is listed in full again."""


class NotFound(ProviderError):
    """HTTP 404/410 on a single resource."""


class PreconditionFailed(ProviderError):
    """HTTP 412: the event's etag is not the one a write was conditional on."""


class Duplicate(ProviderError):
    """HTTP 409: an event with the id an insert chose exists already."""


def _error_reason(exc: HttpError) -> str:
    try:
        error = json.loads(exc.content.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return ""
    if not isinstance(error, dict):
        return ""
    for detail in error.get("errors") or error.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            return str(detail["reason"])
    return str(error.get("status") or "")


def provider_error(exc: HttpError, *, what: str, action: str = "list") -> ProviderError:
    """An HTTP error from the Calendar API as one of Caly's error kinds (never with the URL);
    `action` is what Caly was doing to `what` ("list", "change")."""
    status = exc.resp.status
    reason = _error_reason(exc)
    retry_after = retry_after_seconds(exc.resp.get("retry-after"))
    label = f"HTTP {status}" + (f" {reason}" if reason else "")
    if status == 410 and reason in ("fullSyncRequired", "updatedMinTooLongAgo", "ABORTED", ""):
        return SyncTokenExpired(f"Google asked for a full sync of {what} ({label}).")
    if status == 429 or status >= 500 or (status == 403 and reason in RATE_LIMIT_REASONS):
        return TransientError(
            f"Google Calendar asked Caly to slow down or was unavailable (to {action} {what}) "
            f"({label}).",
            retry_after=retry_after,
        )
    if status == 403 and reason in DAILY_LIMIT_REASONS:
        return TransientError(
            f"Google Calendar's daily quota is used up ({label}).",
            retry_after=retry_after or 3600,
        )
    if status == 401:
        return AuthError(f"Google refused Caly's access to this account ({label}). {RECONNECT}")
    if status == 403 and reason in SCOPE_REASONS and action != "list":
        return AuthError(
            "The Google account was connected with read-only access, so Caly may not change "
            f"its events. {RECONNECT}"
        )
    if status == 403 and reason in SCOPE_REASONS:
        return AuthError(f"The Google account did not allow Caly to read calendars. {RECONNECT}")
    if status == 412:
        return PreconditionFailed(f"{what} changed on Google meanwhile ({label}).")
    if status == 409:
        return Duplicate(f"{what} exists on Google already ({label}).")
    if status in (404, 410):
        return NotFound(f"Google Calendar could not find {what} ({label}).")
    return ProviderError(f"Google Calendar refused to {action} {what} ({label}).")


def refresh_failure(exc: google.auth.exceptions.RefreshError) -> ProviderError:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error = str(data.get("error") or "")
    if not error and exc.args:
        error = str(exc.args[0]).partition(":")[0].strip()
    if error == "invalid_grant":
        return AuthError(
            "Google no longer accepts Caly's authorisation for this account (invalid_grant: it "
            f"was revoked or has expired). {RECONNECT}"
        )
    if error in ("invalid_client", "unauthorized_client"):
        return ProviderError(
            f"Google refused Caly's OAuth client ({error}): check CALY_GOOGLE_CLIENT_ID and "
            "CALY_GOOGLE_CLIENT_SECRET."
        )
    if getattr(exc, "retryable", False):
        return TransientError("Google's token endpoint is unavailable.")
    return ProviderError(f"Google refused to renew the access token ({error or 'unknown error'}).")
