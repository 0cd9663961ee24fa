"""Reconciling remote changes with stored events — pure: plain data in, a write plan out.

No ORM and no HTTP here, so every rule about what to create, update or delete is unit-tested on
plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from sync.providers.base import RemoteEvent, RemoteObject

Key = tuple[str, str]  # (uid, recurrence_id)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    uid: str
    recurrence_id: str
    href: str
    etag: str


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
    unchanged: int = 0

    @property
    def writes(self) -> list[EventWrite]:
        return self.create + self.update

    @property
    def is_empty(self) -> bool:
        return not (self.create or self.update or self.delete_ids)


def normalize_href(href: str) -> str:
    """Servers disagree on percent-encoding (`%40` vs `@`); compare unquoted paths."""
    return unquote(href)


def listing_diff(
    known: Mapping[str, str], listed: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """From stored href→etag and a full remote listing href→etag: hrefs to fetch, hrefs gone."""
    known_n = {normalize_href(h): e for h, e in known.items()}
    listed_n = {normalize_href(h): (h, e) for h, e in listed.items()}
    to_fetch = [h for n, (h, e) in listed_n.items() if known_n.get(n) != e]
    gone = [h for h in known if normalize_href(h) not in listed_n]
    return to_fetch, gone


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
        elif current.etag == write.etag and current.href == write.href and write.etag:
            plan.unchanged += 1
        else:
            plan.update.append(write)
    plan.delete_ids = sorted(
        s.id
        for key, s in stored_by_key.items()
        if key not in incoming and normalize_href(s.href) in touched
    )
    return plan
