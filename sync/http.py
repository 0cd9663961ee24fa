"""The one HTTP session every provider client sends through: pooled, with a timeout, no cookies."""

import threading

import niquests
from django.conf import settings

from sync import netguard

USER_AGENT = "Caly/1.0 (calendar sync)"

_lock = threading.Lock()
_session: niquests.Session | None = None
_pool_size = 10


def _new_session(pool_size: int) -> niquests.Session:
    # Cookies are refused: the session is shared by all accounts, and one user's server session
    # must never ride along with another user's requests. The guarded session refuses private
    # addresses (every redirect and connection) and oversized or endless responses.
    return netguard.GuardedSession(
        pool_connections=pool_size,
        pool_maxsize=pool_size,
        timeout=settings.CALY_HTTP_TIMEOUT,
        headers={"User-Agent": USER_AGENT},
        allow_incoming_cookies=False,
    )


def open_pool(*, slots: int) -> None:
    """Called at worker start: one connection per slot and server is enough."""
    global _session, _pool_size
    with _lock:
        _pool_size = max(slots, 1)
        if _session is not None:
            _session.close()
        _session = _new_session(_pool_size)


def close_pool() -> None:
    global _session
    with _lock:
        if _session is not None:
            _session.close()
        _session = None


def session() -> niquests.Session:
    """The shared session, opened on first use outside a worker (web process, management command)."""
    global _session
    with _lock:
        if _session is None:
            _session = _new_session(_pool_size)
        return _session
