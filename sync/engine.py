"""Reconciling remote changes with stored events — pure: plain data in, a write plan out.

No ORM and no HTTP here, so every rule about what to create, update or delete is unit-tested on
plain values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from sync.remote import RemoteEvent, RemoteObject

Key = tuple[str, str]  # (uid, recurrence_id)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    uid: str
    recurrence_id: str
    href: str
    etag: str
    # MD5 of the stored raw source (hex; as PostgreSQL's md5() computes it), "" if unknown.
    raw_digest: str = ""


def raw_digest(raw: str) -> str:
    """The digest `StoredEvent.raw_digest` holds, for comparing sources without loading them."""
    return hashlib.md5(raw.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class EventWrite:
    """An event to store, with where it came from."""

    event: RemoteEvent
    href: str
    etag: str
    raw: str

    @property
    def key(self) -> Key:
        return (self.event.uid, self.event.recurrence_id)


@dataclass
class Plan:
    create: list[EventWrite] = field(default_factory=list)
    update: list[EventWrite] = field(default_factory=list)
    delete_ids: list[int] = field(default_factory=list)
    # Same source under a new etag (or href): only where it lives is rewritten, not the event.
    relocate: list[tuple[int, EventWrite]] = field(default_factory=list)
    unchanged: int = 0
    # Set once stored: the ids of the events created and updated.
    created_ids: list[int] = field(default_factory=list)
    updated_ids: list[int] = field(default_factory=list)

    @property
    def writes(self) -> list[EventWrite]:
        return self.create + self.update


def normalize_href(href: str) -> str:
    """Servers disagree on percent-encoding (`%40` vs `@`); compare unquoted paths."""
    return unquote(href)


def changed_hrefs(known: Mapping[str, str], listed: Mapping[str, str]) -> list[str]:
    """Of a remote listing href→etag, the hrefs whose object differs from the stored one: new,
    another etag, or no etag to tell by. Every provider decides what to fetch with this."""
    known_n = {normalize_href(h): e for h, e in known.items()}
    return [h for h, e in listed.items() if not e or known_n.get(normalize_href(h)) != e]


def listing_diff(
    known: Mapping[str, str], listed: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """From stored href→etag and a full remote listing href→etag: hrefs to fetch, hrefs gone."""
    listed_n = {normalize_href(h) for h in listed}
    gone = [h for h in known if normalize_href(h) not in listed_n]
    return changed_hrefs(known, listed), gone


def empty_listing_confirmed(*, second_listing: int, state_changed: bool | None) -> bool:
    """May a full listing with no objects delete every stored event of a calendar?

    Only when the server says so twice: a second, independent listing is empty too, and the
    calendar's sync token or ctag moved since the last sync (`None`: the server keeps none).
    An empty answer under an unchanged token contradicts itself and must not wipe anything.
    """
    return second_listing == 0 and state_changed is not False


def plan_changes(
    *,
    stored: Iterable[StoredEvent],
    objects: Iterable[RemoteObject],
    deleted_hrefs: Iterable[str] = (),
) -> Plan:
    """What to write so the stored events of the touched hrefs match the remote objects.

    `stored` must include every stored event whose href is touched (changed or deleted) or whose
    key appears in `objects`. Events are keyed by (UID, RECURRENCE-ID): an event that moved to
    another href is updated, not deleted and recreated; a later duplicate of a key wins.
    """
    stored_by_key = {(s.uid, s.recurrence_id): s for s in stored}
    incoming: dict[Key, EventWrite] = {}
    touched = {normalize_href(h) for h in deleted_hrefs}
    for obj in objects:
        touched.add(normalize_href(obj.href))
        for event in obj.events:
            write = EventWrite(event=event, href=obj.href, etag=obj.etag, raw=obj.raw)
            incoming[write.key] = write

    plan = Plan()
    for key, write in incoming.items():
        current = stored_by_key.get(key)
        if current is None:
            plan.create.append(write)
        elif (
            current.etag == write.etag
            and normalize_href(current.href) == normalize_href(write.href)
            and write.etag
        ):
            plan.unchanged += 1
        elif current.raw_digest and current.raw_digest == raw_digest(write.raw):
            plan.relocate.append((current.id, write))
        else:
            plan.update.append(write)
    plan.delete_ids = sorted(
        s.id
        for key, s in stored_by_key.items()
        if key not in incoming and normalize_href(s.href) in touched
    )
    return plan
