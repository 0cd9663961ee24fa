"""The one interface every calendar provider implements, the data it hands over, and its errors.

Library objects (caldav resources, Google response dicts) never leave a provider module: they
become the plain data classes below, which the engine and the services work on. The immutable
ones are msgspec structs: a sync builds one RemoteEvent and one RemoteObject per event, and a
struct is built ten times faster than a frozen dataclass (0.2 µs against 2 µs for RemoteEvent).
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import msgspec

from caly.scrub import scrub


class RemoteCalendar(msgspec.Struct, frozen=True):
    remote_id: str
    name: str = ""
    color: str = ""
    timezone: str = ""


class RemoteEvent(msgspec.Struct, frozen=True):
    """One VEVENT (or Google event) in provider-neutral form. Times are aware UTC."""

    uid: str
    recurrence_id: str = ""
    summary: str = ""
    description: str = ""
    location: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    all_day: bool = False
    timezone: str = ""
    status: str = ""
    rrule: str = ""
    rdate: tuple[str, ...] = ()
    exdate: tuple[str, ...] = ()
    last_modified: dt.datetime | None = None


class RemoteObject(msgspec.Struct, frozen=True):
    """A remote resource holding one or more events (a CalDAV object, a Google event)."""

    href: str
    etag: str
    events: tuple[RemoteEvent, ...]
    raw: str = ""


class SkippedObject(msgspec.Struct, frozen=True):
    href: str
    reason: str


class Cursor(msgspec.Struct, frozen=True):
    """Where the previous sync of a calendar left off."""

    sync_token: str = ""
    ctag: str = ""


@dataclass
class ChangeBatch:
    """A slice of a calendar's changes, applied in its own transaction.

    `cursor` is set only on the last batch: the sync state is saved once everything before it is
    stored, so an interrupted sync starts again from the old state and loses nothing.
    """

    objects: list[RemoteObject] = field(default_factory=list)
    deleted_hrefs: list[str] = field(default_factory=list)
    skipped: list[SkippedObject] = field(default_factory=list)
    cursor: Cursor | None = None


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


class AuthError(ProviderError):
    """The server refused our credentials: the user has to reconnect the account."""


class ConnectError(ProviderError):
    """The account cannot be connected: unreachable, not a calendar server, wrong address."""


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

    @abc.abstractmethod
    def discover(self) -> list[RemoteCalendar]:
        """The account's calendars; raises ConnectError or AuthError if it cannot be reached."""

    @abc.abstractmethod
    def changes(
        self, calendar: RemoteCalendar, *, cursor: Cursor, known: Mapping[str, str]
    ) -> Iterator[ChangeBatch]:
        """What changed in `calendar` since `cursor`, in batches.

        `known` maps each stored href to its etag, so a full listing only fetches what differs
        and reports what disappeared. The last batch carries the new cursor.
        """

    def close(self) -> None:  # noqa: B027 - optional hook; most providers hold nothing
        """Release what the provider holds (connections are pooled and shared)."""
