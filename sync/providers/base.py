"""The one interface every calendar provider implements, and its errors.

Library objects (caldav resources, Google response dicts) never leave a provider module: they
become the plain data of `sync.remote`, which the engine and the services work on.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Iterator, Mapping

from caly.scrub import scrub
from sync.remote import (
    ChangeBatch,
    Cursor,
    Fetching,
    LocalChange,
    OutgoingWrite,
    RemoteCalendar,
    RemoteObject,
)

# The stored href → etag of a calendar, read when called (once: the answer is kept for the
# sync). A sync that compares nothing (an unchanged CTag, an empty list of changes) never calls
# it, and so reads none of them.
StoredEtags = Callable[[], Mapping[str, str]]


class ProviderError(Exception):
    """A sync could not be done; the message is readable and carries no credentials."""

    def __str__(self) -> str:
        # Messages quote URLs and library errors; whatever those carry, no credential gets out.
        return scrub(super().__str__())


class TransientError(ProviderError):
    """Timeouts, 429, 5xx: try again later (after `retry_after` seconds if the server said)."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class TimedOut(TransientError):
    """The server did not answer one request within CALY_HTTP_TIMEOUT. A sync that asked for a
    lot at once asks for less instead of asking the same again (docs/large-calendars.md)."""


class AuthError(ProviderError):
    """The server refused our credentials: the user has to reconnect the account."""


class ConnectError(ProviderError):
    """The account cannot be connected: unreachable, not a calendar server, wrong address."""


class WriteConflict(ProviderError):
    """The server's copy changed since Caly last saw it (412): the change was not applied.

    `current` is the server's object as it is now, or None when it is gone from the server.
    """

    def __init__(self, message: str, *, current: RemoteObject | None):
        super().__init__(message)
        self.current = current


class Provider(abc.ABC):
    """A connection to one account's calendar service, used by one sync at a time."""

    def __init__(
        self,
        *,
        url: str = "",
        username: str = "",
        credentials: Mapping | None = None,
        home_url: str = "",
    ):
        self.url = url
        self.username = username
        self.credentials = dict(credentials or {})
        # Where discovery found the calendars last time (CalDAV calendar home); saves the
        # discovery round trips on every sync. Providers that need none ignore it.
        self.home_url = home_url
        # Set by the runner: called by the provider inside every loop of requests
        # (continuations, pages, multiget batches); raises to stop the sync (deadline,
        # hand-back, lease lost).
        self.checkpoint: Callable[[], None] = lambda: None
        # Set by the runner before `discover`: the stored cursor of each selected calendar, by
        # remote id, so that the calendar listing can ask for what their syncs will need.
        self.cursors: Mapping[str, Cursor] = {}

    @abc.abstractmethod
    def discover(self) -> list[RemoteCalendar]:
        """The account's calendars; raises ConnectError or AuthError if it cannot be reached."""

    @abc.abstractmethod
    def changes(
        self,
        calendar: RemoteCalendar,
        *,
        cursor: Cursor,
        stored_etags: StoredEtags,
        fetching: Fetching = Fetching(),  # noqa: B008 - immutable
    ) -> Iterator[ChangeBatch]:
        """What changed in `calendar` since `cursor`, in batches.

        `stored_etags()` gives each stored href's etag, for `engine.changed_hrefs` and
        `engine.listing_diff` to say what to fetch and what disappeared; call it only when
        there is something to compare. The last batch carries the new cursor. `fetching` is
        what earlier syncs learnt about fetching this calendar; a batch carries it anew when
        this sync learns otherwise.
        """

    @classmethod
    def encode_write(cls, change: LocalChange) -> OutgoingWrite:
        """What to send for a change made through Caly; pure (no request), so the API calls it
        while recording the change. Raises ValueError if the stored source cannot take it."""
        raise ProviderError(f"{cls.__name__} cannot write events.")

    def write(self, write: OutgoingWrite, *, calendar_id: str, etag: str) -> RemoteObject | None:
        """Send one write to the calendar `calendar_id` (its remote id), conditional on `etag`
        (the stored one; "" for a new event).

        Returns the object as now on the server (its new etag), or None once it is deleted.
        Raises WriteConflict if the server's copy changed since `etag`, and recognises its own
        earlier attempt (`write.marker` on the server) as done.
        """
        raise ProviderError(f"{type(self).__name__} cannot write events.")

    # Can the server tell Caly of changes (`watch`)? Only Google's can, today.
    supports_push = False

    def watch(
        self, calendar_id: str, *, channel_id: str, token: str, address: str, ttl_seconds: int
    ) -> tuple[str, dt.datetime]:
        """Ask the server to POST to `address` when the calendar changes; returns the watched
        resource's id and when the channel expires."""
        raise ProviderError(f"{type(self).__name__} cannot push changes.")

    def unwatch(self, *, channel_id: str, resource_id: str) -> None:
        """Stop a channel `watch` opened; one the server no longer knows counts as stopped."""
        raise ProviderError(f"{type(self).__name__} cannot push changes.")

    def close(self) -> None:  # noqa: B027 - optional hook; most providers hold nothing
        """Release what the provider holds (connections are pooled and shared)."""
