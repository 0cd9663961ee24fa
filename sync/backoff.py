"""How long to wait before trying a server again: exponential backoff with full jitter, and the
server's own Retry-After (delta-seconds or an HTTP date, RFC 9110 §10.2.3) as the floor."""

from __future__ import annotations

import datetime as dt
import math
import random
from email.utils import parsedate_to_datetime


def backoff(
    *,
    attempt: int,
    base: float,
    cap: float = math.inf,
    retry_after: float | None = None,
    spread: float = 0.0,
) -> float:
    """Seconds to wait after try number `attempt` (0 for the first) failed.

    A random wait up to `base` · 2^attempt (at most `cap`), so clients that failed together do
    not come back together. A server's Retry-After is the floor, plus up to `spread` seconds
    for the same reason.
    """
    wait = random.uniform(0, min(cap, base * 2**attempt))
    if retry_after is not None:
        wait = max(wait, retry_after + (random.uniform(0, spread) if spread else 0.0))
    return wait


def retry_after_seconds(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """A Retry-After header as seconds from now (never negative); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())
