"""The pure reconciliation rules: what to create, update, relocate or delete, and when not to."""

from __future__ import annotations

from sync.engine import (
    StoredEvent,
    changed_hrefs,
    empty_listing_confirmed,
    listing_diff,
    plan_changes,
    raw_digest,
)
from sync.remote import RemoteEvent, RemoteObject


def obj(href: str, etag: str, *events: RemoteEvent, raw: str = "") -> RemoteObject:
    return RemoteObject(href=href, etag=etag, events=events, raw=raw or f"raw of {href} {etag}")


def stored(pk: int, uid: str, href: str, etag: str, *, rid: str = "", raw: str = "") -> StoredEvent:
    return StoredEvent(pk, uid, rid, href, etag, raw_digest(raw) if raw else "")


def test_new_changed_unchanged_and_gone():
    plan = plan_changes(
        stored=[
            stored(1, "same", "/c/same.ics", '"1"'),
            stored(2, "changed", "/c/changed.ics", '"1"'),
            stored(3, "gone", "/c/gone.ics", '"1"'),
        ],
        objects=[
            obj("/c/same.ics", '"1"', RemoteEvent(uid="same")),
            obj("/c/changed.ics", '"2"', RemoteEvent(uid="changed")),
            obj("/c/new.ics", '"1"', RemoteEvent(uid="new")),
        ],
        deleted_hrefs=["/c/gone.ics"],
    )
    assert [w.event.uid for w in plan.create] == ["new"]
    assert [w.event.uid for w in plan.update] == ["changed"]
    assert plan.delete_ids == [3]
    assert plan.unchanged == 1


def test_same_source_under_a_new_etag_is_relocated_not_updated():
    raw = "BEGIN:VCALENDAR…"
    plan = plan_changes(
        stored=[stored(7, "a", "/c/a.ics", '"old"', raw=raw)],
        objects=[obj("/c/a%2B.ics", '"new"', RemoteEvent(uid="a"), raw=raw)],
    )
    assert not plan.create and not plan.update and not plan.delete_ids
    assert [(pk, w.etag) for pk, w in plan.relocate] == [(7, '"new"')]


def test_override_rows_are_their_own_and_vanish_with_their_object():
    master = RemoteEvent(uid="s", rrule="FREQ=DAILY")
    moved = RemoteEvent(uid="s", recurrence_id="20260106T090000Z")
    plan = plan_changes(
        stored=[
            stored(1, "s", "/c/s.ics", '"1"'),
            stored(2, "s", "/c/s.ics", '"1"', rid="20260105T090000Z"),
        ],
        objects=[obj("/c/s.ics", '"2"', master, moved)],
    )
    assert [(w.event.uid, w.event.recurrence_id) for w in plan.update] == [("s", "")]
    assert [w.event.recurrence_id for w in plan.create] == ["20260106T090000Z"]
    assert plan.delete_ids == [2]


def test_href_spellings_match():
    plan = plan_changes(
        stored=[stored(1, "a", "/c/me@example.com.ics", '"1"')],
        objects=[],
        deleted_hrefs=["/c/me%40example.com.ics"],
    )
    assert plan.delete_ids == [1]
    to_fetch, gone = listing_diff(
        {"/c/me@example.com.ics": '"1"', "/c/old.ics": '"1"'},
        {"/c/me%40example.com.ics": '"1"', "/c/new.ics": '"1"'},
    )
    assert (to_fetch, gone) == (["/c/new.ics"], ["/c/old.ics"])


def test_what_to_fetch_is_what_is_new_changed_or_cannot_be_told_apart():
    stored = {"/c/same.ics": '"1"', "/c/edited.ics": '"1"', "/c/no-etag.ics": ""}
    listed = {
        "/c/same.ics": '"1"',
        "/c/edited.ics": '"2"',
        "/c/no-etag.ics": "",  # a server that sends no etag: no way to tell, so fetch it
        "/c/new.ics": '"1"',
    }
    assert changed_hrefs(stored, listed) == ["/c/edited.ics", "/c/no-etag.ics", "/c/new.ics"]
    assert changed_hrefs(stored, {}) == []


def test_empty_listing_needs_the_server_to_confirm_it():
    # A second listing that is not empty contradicts the first.
    assert not empty_listing_confirmed(second_listing=3, state_changed=True)
    # Empty twice, but the sync token did not move: the server contradicts itself.
    assert not empty_listing_confirmed(second_listing=0, state_changed=False)
    # Empty twice and the token moved (or the server keeps none): really emptied.
    assert empty_listing_confirmed(second_listing=0, state_changed=True)
    assert empty_listing_confirmed(second_listing=0, state_changed=None)
