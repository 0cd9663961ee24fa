"""Writing back: events created, changed and deleted through Caly.

A change is applied to the local rows at once and recorded as a `PendingWrite` in the same
transaction, with what the provider will send (`Provider.encode_write`). The account's next run
(`runs.py`) carries its pending writes to the server first, one at a time in the order the API
accepted them, then syncs; a write on its own queues a writes-only run. The account's row is
locked while a write is recorded, so that the ids of one account's writes are the order in which
they were accepted, whatever the number of web processes.

Each write is conditional on the etag Caly last saw (CalDAV `If-Match`/`If-None-Match: *`,
Google `If-Match` and a Caly-chosen event id): a server copy changed meanwhile is kept and the
event marked `conflict`. A write sent again after its worker died recognises itself on the
server by its marker and is not applied twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from calendars import selectors as calendar_selectors
from calendars.models import Account, Calendar, Event
from sync.engine import normalize_href
from sync.models import PendingWrite, SyncRun
from sync.providers import provider_class
from sync.providers.base import (
    AuthError,
    Provider,
    ProviderError,
    TransientError,
    WriteConflict,
)
from sync.remote import ChangeBatch, EventValues, LocalChange, OutgoingWrite, RemoteObject
from sync.services.requests import sync_request_account
from sync.services.store import events_apply

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = dt.timedelta(hours=24)
VALUE_FIELDS = tuple(EventValues.__struct_fields__)


class WriteRefused(Exception):
    """The change cannot be made; `field` names what is wrong (for a 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# --- accepting a change (the API) -----------------------------------------------------------
def event_create(*, calendar: Calendar, values: EventValues, idempotency_key: str = "") -> Event:
    """A new event in `calendar`, stored at once and on its way to the server."""
    _check_writable(calendar)
    with transaction.atomic():
        account = _lock_account(calendar)
        if idempotency_key:
            earlier = (
                PendingWrite.objects.filter(
                    account__owner=account.owner_id,
                    kind=PendingWrite.Kind.CREATE,
                    idempotency_key=idempotency_key,
                    accepted_at__gte=timezone.now() - IDEMPOTENCY_WINDOW,
                    event__isnull=False,
                )
                .select_related("event")
                .first()
            )
            if earlier is not None:
                return earlier.event
        change = LocalChange(
            kind="create",
            calendar_id=calendar.remote_id,
            uid=str(uuid.uuid4()),
            values=values,
            marker=_marker(),
            changed=VALUE_FIELDS,
        )
        write = _encode(account, change)
        event = Event.objects.create(
            calendar=calendar,
            uid=write.uid or change.uid,
            href=normalize_href(write.href),
            raw=write.source,
            sync_state=Event.SyncState.PENDING,
            **_row_values(values),
        )
        _record(account, calendar, event, write, change, idempotency_key=idempotency_key)
    return event


def event_update(*, event: Event, changes: dict, recurrence_id: str = "") -> Event:
    """Change `event` (or, with `recurrence_id`, that one occurrence of the series `event` is
    the master of: an override, returned) with the fields in `changes`."""
    calendar = event.calendar
    _check_writable(calendar)
    with transaction.atomic():
        account = _lock_account(calendar)
        event = _current(event)
        target, key = event, event.recurrence_id
        if recurrence_id and recurrence_id != event.recurrence_id:
            target, key = _occurrence_row(event, recurrence_id), recurrence_id
        values = _merged(target, changes)
        change = _change(event, "update", values, recurrence_id=key, changed=tuple(changes))
        write = _encode(account, change)
        for name, value in _row_values(values).items():
            setattr(target, name, value)
        if target.pk is None:  # a new override: where the provider keeps it
            target.href = normalize_href(write.href)
            target.etag = event.etag if write.source else ""
        target.sync_state, target.sync_error = Event.SyncState.PENDING, ""
        target.save()
        _store_source(event, write)
        _record(account, calendar, target, write, change)
    return target


def event_delete(*, event: Event, recurrence_id: str = "") -> None:
    """Delete `event`, or with `recurrence_id` (or for an override row) that one occurrence."""
    calendar = event.calendar
    _check_writable(calendar)
    with transaction.atomic():
        account = _lock_account(calendar)
        event = _current(event)
        master = None
        if event.recurrence_id and recurrence_id in ("", event.recurrence_id):
            # An override row: cancel its occurrence of the series (if the series is stored).
            master = (
                Event.objects.select_for_update()
                .filter(calendar=calendar, uid=event.uid, recurrence_id="", deleting=False)
                .first()
            )
        if master is not None:
            recurrence_id, event = event.recurrence_id, master
        elif event.recurrence_id:  # its series is not stored: the row goes as it is
            recurrence_id = ""
        change = _change(event, "delete", _merged(event, {}), recurrence_id=recurrence_id)
        if recurrence_id:
            _occurrence_row(event, recurrence_id)  # it must be one of the series
        write = _encode(account, change)
        rows = Event.objects.filter(calendar=calendar, uid=event.uid)
        if recurrence_id:
            rows.filter(recurrence_id=recurrence_id).update(
                deleting=True, sync_state=Event.SyncState.PENDING
            )
            event.exdate = sorted({*event.exdate, recurrence_id})
            event.sync_state, event.sync_error = Event.SyncState.PENDING, ""
            event.save(update_fields=["exdate", "sync_state", "sync_error", "updated_at"])
            _store_source(event, write)
        else:
            rows.update(deleting=True, sync_state=Event.SyncState.PENDING, sync_error="")
        _record(account, calendar, event, write, change)


def _change(
    event: Event, kind: str, values: EventValues, *, recurrence_id: str, changed=()
) -> LocalChange:
    """A change to the stored `event` (the master, for one occurrence)."""
    return LocalChange(
        kind=kind,
        calendar_id=event.calendar.remote_id,
        uid=event.uid,
        values=values,
        marker=_marker(),
        href=event.href,
        raw=event.raw,
        recurrence_id=recurrence_id,
        changed=changed,
    )


def _check_writable(calendar: Calendar) -> None:
    if not calendar.writable:
        raise WriteRefused("calendar", "This calendar is read-only on its server.")
    if not calendar.selected:
        raise WriteRefused("calendar", "This calendar is not synced; select it first.")
    if calendar.account.status != Account.Status.ACTIVE:
        raise WriteRefused(
            "calendar",
            f"The calendar's account is {calendar.account.get_status_display().lower()}; "
            "reconnect it first.",
        )


def _lock_account(calendar: Calendar) -> Account:
    # Serialises the account's writes: their ids are the order they were accepted in.
    return Account.objects.select_for_update().defer("credentials").get(pk=calendar.account_id)


def _current(event: Event) -> Event:
    current = Event.objects.select_for_update().filter(pk=event.pk, deleting=False).first()
    if current is None:
        raise WriteRefused("id", "The event is being deleted.")
    return current


def _occurrence_row(master: Event, recurrence_id: str) -> Event:
    """The stored override of one occurrence of `master`'s series, or a new unsaved one
    carrying that occurrence's times; WriteRefused if the series has no such occurrence."""
    if not (master.rrule or master.rdate) or master.recurrence_id:
        raise WriteRefused("recurrence_id", "Only a recurring event has occurrences.")
    stored = Event.objects.filter(
        calendar=master.calendar, uid=master.uid, recurrence_id=recurrence_id
    ).first()
    if stored is not None:
        return stored
    instant = _key_instant(recurrence_id)
    window = calendar_selectors.events_in_window(
        user=master.calendar.account.owner,
        start=instant - dt.timedelta(seconds=1),
        end=instant + dt.timedelta(seconds=1),
        limit=100,
        calendar_id=master.calendar_id,
    )
    found = next(
        (o for o in window if o.pk == master.pk and o.recurrence_id == recurrence_id), None
    )
    if found is None:
        raise WriteRefused("recurrence_id", "The series has no occurrence at that time.")
    return Event(
        calendar=master.calendar,
        uid=master.uid,
        recurrence_id=recurrence_id,
        **{name: getattr(found, name) for name in VALUE_FIELDS if name != "rrule"},
    )


def _key_instant(key: str) -> dt.datetime:
    try:
        if len(key) == 8:
            return dt.datetime.strptime(key, "%Y%m%d").replace(tzinfo=dt.UTC)
        return dt.datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise WriteRefused(
            "recurrence_id", "Give an occurrence's recurrence_id as the events listing shows it."
        ) from None


def _merged(row: Event, changes: dict) -> EventValues:
    values = {name: getattr(row, name) for name in VALUE_FIELDS}
    if row.recurrence_id:
        values["rrule"] = ""
    values.update(changes)
    for name in ("summary", "description", "location", "timezone", "rrule"):
        values[name] = values[name] or ""
    merged = EventValues(**values)
    if merged.start is not None and merged.end is not None and merged.end <= merged.start:
        raise WriteRefused("end", "Must be after start.")
    return merged


def _row_values(values: EventValues) -> dict:
    return {name: getattr(values, name) for name in VALUE_FIELDS}


def _marker() -> str:
    return uuid.uuid4().hex


def _encode(account: Account, change: LocalChange) -> OutgoingWrite:
    try:
        return provider_class(account.provider).encode_write(change)
    except ValueError as exc:
        raise WriteRefused("id", str(exc)) from None
    except ProviderError as exc:
        raise WriteRefused("calendar", str(exc)) from None


def _store_source(event: Event, write: OutgoingWrite) -> None:
    """The object as it will be on the server, on every row it holds (CalDAV)."""
    if write.source:
        Event.objects.filter(calendar=event.calendar, href=event.href).update(raw=write.source)


def _record(
    account: Account,
    calendar: Calendar,
    event: Event,
    write: OutgoingWrite,
    change: LocalChange,
    *,
    idempotency_key: str = "",
) -> PendingWrite:
    pending = PendingWrite.objects.create(
        account=account,
        calendar=calendar,
        event=event,
        uid=event.uid,
        recurrence_id=change.recurrence_id,
        # What is sent: cancelling one occurrence is a change of the object on CalDAV.
        kind=write.kind,
        href=write.href,
        body=write.body,
        marker=write.marker,
        fields=list(change.changed),
        idempotency_key=idempotency_key,
    )
    # Published once this transaction commits; a queued run of the account serves.
    sync_request_account(account=account, trigger=SyncRun.Trigger.WRITE, writes_only=True)
    return pending


# --- carrying writes out (a run) ------------------------------------------------------------
def writes_push(
    *, account_id: int, provider: Provider, checkpoint: Callable[[], None], fence
) -> int:
    """Send the account's pending writes, oldest first; returns how many were settled.

    A transient or authentication error stops here (the run retries, or the account needs
    reconnecting): the write stays pending and goes first next time.
    """
    done = 0
    pending = PendingWrite.objects.filter(account_id=account_id, state=PendingWrite.State.PENDING)
    while (write := pending.select_related("calendar").order_by("id").first()) is not None:
        checkpoint()
        outgoing = OutgoingWrite(
            kind=write.kind, href=write.href, marker=write.marker, body=write.body
        )
        etag = "" if write.kind == PendingWrite.Kind.CREATE else _stored_etag(write)
        try:
            result = provider.write(outgoing, calendar_id=write.calendar.remote_id, etag=etag)
        except WriteConflict as exc:
            _settle_conflict(write, exc, fence=fence)
        except (TransientError, AuthError):
            raise
        except ProviderError as exc:
            _settle_failed(write, str(exc), fence=fence)
        else:
            _settle_applied(write, result, fence=fence)
        done += 1
    return done


def _stored_etag(write: PendingWrite) -> str:
    rows = Event.objects.filter(calendar=write.calendar, href=normalize_href(write.href))
    return rows.exclude(etag="").values_list("etag", flat=True).first() or ""


def _events(write: PendingWrite):
    return Event.objects.filter(calendar=write.calendar, uid=write.uid)


def _close(write: PendingWrite, state: str, error: str = "") -> None:
    write.state, write.error, write.applied_at = state, error, timezone.now()
    write.save(update_fields=["state", "error", "applied_at"])


def _settle_applied(write: PendingWrite, result: RemoteObject | None, *, fence) -> None:
    with transaction.atomic():
        fence()
        if result is None:  # deleted
            _events(write).filter(href=normalize_href(write.href)).delete()
            _events(write).filter(deleting=True).delete()
        else:
            uid = result.events[0].uid if result.events else write.uid
            if write.kind == PendingWrite.Kind.CREATE and uid != write.uid:
                _events(write).update(uid=uid)  # the server named it otherwise
                write.uid = uid
                write.save(update_fields=["uid"])
        _close(write, PendingWrite.State.APPLIED)
        later = PendingWrite.objects.filter(
            calendar=write.calendar, uid=write.uid, state=PendingWrite.State.PENDING
        ).exists()
        if result is not None and later:
            # Newer changes of the event wait their turn: the rows keep them, and only the
            # etag the next write is conditional on moves.
            rows = Event.objects.filter(calendar=write.calendar, href=normalize_href(result.href))
            rows.update(etag=result.etag)
        elif result is not None:
            batch = ChangeBatch(objects=[result])
            events_apply(calendar=write.calendar, batch=batch, own_write=True)
        if not later:
            _events(write).update(sync_state=Event.SyncState.SYNCED, sync_error="")


def _settle_conflict(write: PendingWrite, conflict: WriteConflict, *, fence) -> None:
    """The server's copy wins: stored as it is, and this write and the later ones of the same
    event are not applied."""
    what = (
        "deletion"
        if write.kind == PendingWrite.Kind.DELETE
        else ("change of " + ", ".join(write.fields) if write.fields else "change")
    )
    error = f"{conflict} Your {what} was not applied; the server's version is kept."
    with transaction.atomic():
        fence()
        later = PendingWrite.objects.filter(
            calendar=write.calendar, uid=write.uid, state=PendingWrite.State.PENDING
        )
        later.update(state=PendingWrite.State.CONFLICT, error=error, applied_at=timezone.now())
        if conflict.current is None:
            _events(write).delete()
        else:
            events_apply(
                calendar=write.calendar,
                batch=ChangeBatch(objects=[conflict.current]),
                own_write=True,
            )
        _events(write).update(sync_state=Event.SyncState.CONFLICT, sync_error=error, deleting=False)
    logger.info("write %s of account %s: conflict", write.pk, write.account_id)


def _settle_failed(write: PendingWrite, error: str, *, fence) -> None:
    with transaction.atomic():
        fence()
        _close(write, PendingWrite.State.FAILED, error)
        _events(write).update(sync_state=Event.SyncState.FAILED, sync_error=error, deleting=False)
    logger.info("write %s of account %s failed: %s", write.pk, write.account_id, error)
