"""Keeping secrets out of text Caly writes down: logs, run errors, API errors, exception messages.

`scrub(text)` removes what looks like a credential: the userinfo of URLs
(`https://me:pw@host` → `https://***@host`), `Authorization` header values, `password=…`,
`token: …` and similar pairs, Fernet tokens (encrypted credentials), the secret of a private
feed's URL (`/feeds/<secret>.ics` → `/feeds/***`: access logs, "Not Found" lines), and any exact
secret the caller passes. `ScrubFilter` applies it to every log record, traceback included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "***"
# Libraries log whole server responses (python-caldav logs any body it cannot parse); a hostile
# server must not be able to fill the logs.
MAX_LOG_MESSAGE = 4000
# Shorter values are too likely to occur by chance and would mangle ordinary words.
MIN_SECRET_LENGTH = 4

_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s?#@]+@")
_AUTH_SCHEME = re.compile(
    r"(?P<head>\b(?:Basic|Bearer|Digest|Token|Negotiate)\s+)[A-Za-z0-9+/=._~\-]{6,}"
)
_SENSITIVE_KEY = (
    r"(?:password|passwd|pwd|passphrase|secret|client_secret|api_?key|authorization"
    r"|(?:access_|refresh_|id_|auth_|bearer_)?token)"
)
# key=value, key: value, "key": "value", 'key': 'value' (URLs, headers, JSON, Python reprs).
_KEY_VALUE = re.compile(
    rf"""(?P<head>(?<![\w-]){_SENSITIVE_KEY}["']?\s*[:=]\s*["']?"""
    r"(?:(?:Basic|Bearer|Digest|Token|Negotiate)\s+)?)"
    r"""(?P<value>[^\s"'&,;})\]]+)""",
    re.IGNORECASE,
)
_FERNET_TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_\-]{40,}={0,2}")
# An OAuth authorization code in a callback URL's query (the web server's access log).
_OAUTH_CODE = re.compile(r"(?P<head>[?&]code=)[^\s&#\"']+")
# A private feed's URL is its own key (calendars.feeds).
_FEED_SECRET = re.compile(r"(?P<head>/feeds/)[^/\s?#\"']+")


def scrub(text: str, *, secrets: Iterable[str] = ()) -> str:
    """`text` without credentials; `secrets` are exact values to remove as well."""
    if not text:
        return text
    exact = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
    for secret in sorted(exact, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _AUTH_SCHEME.sub(rf"\g<head>{REDACTED}", text)
    text = _KEY_VALUE.sub(lambda m: m["head"] + REDACTED, text)
    text = _OAUTH_CODE.sub(rf"\g<head>{REDACTED}", text)
    text = _FEED_SECRET.sub(rf"\g<head>{REDACTED}", text)
    return _FERNET_TOKEN.sub(REDACTED, text)


def scrub_data(data):
    """`scrub` applied to every string inside JSON-like data (API error bodies)."""
    if isinstance(data, str):
        cleaned = scrub(data)
        return data if cleaned == data else cleaned
    if isinstance(data, dict):
        return {key: scrub_data(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [scrub_data(value) for value in data]
    return data


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters not logged]"


class ScrubFilter(logging.Filter):
    """Logging filter (on handlers): the formatted message and traceback, scrubbed and capped."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's error path
            return True
        cleaned = scrub(shorten(message, MAX_LOG_MESSAGE))
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_filter(logger: logging.Logger | None = None) -> None:
    """Put a ScrubFilter on every handler of `logger` (the root logger by default)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
