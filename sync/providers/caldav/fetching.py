"""Fetching a calendar's objects: calendar-multiget in batches sized to how fast the server
answers, parsed as they stream in, each object read by `sync.ical.parse_object`.

A batch that takes longer than CALY_HTTP_TIMEOUT is asked for again in halves; one answered
in a small part of it lets the next grow back, up to CALY_SYNC_BATCH_SIZE. The size that
worked is kept per calendar (`Fetching.batch`). Why and what it costs: docs/large-calendars.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

from django.conf import settings

from sync.engine import normalize_href
from sync.ical import MalformedObject, parse_object
from sync.providers.base import TimedOut
from sync.providers.caldav.dav import MULTIGET_HEAD, DAVSession, Item, xml_escape
from sync.remote import ChangeBatch, Cursor, Fetching, RemoteCalendar, RemoteObject, SkippedObject

logger = logging.getLogger(__name__)

# What the run's skipped list says of objects a sync could not get; the cursor stays put.
NOT_SENT = "the server left it out of its answer; Caly asks for it again at the next sync"
LISTING_CUT = (
    "the server cut its list of events short (HTTP 507): events it did not list were neither "
    "updated nor deleted; Caly lists them again at the next sync"
)
# A batch answered within this share of the timeout may grow; one past the other shrinks.
GROW_BELOW, SHRINK_ABOVE = 1 / 8, 1 / 2


def batch_size() -> int:
    return max(1, settings.CALY_SYNC_BATCH_SIZE)


class Fetcher:
    """One calendar's objects for one sync: batches of parsed objects, and what it learnt."""

    def __init__(
        self,
        dav: DAVSession,
        calendar: RemoteCalendar,
        *,
        checkpoint: Callable[[], None],
        fetching: Fetching,
    ):
        self.dav, self.calendar, self.checkpoint = dav, calendar, checkpoint
        self.by_listing = fetching.by_listing
        self.size = min(fetching.batch or batch_size(), batch_size())
        self._kept = fetching  # what the calendar has stored
        # href → etag of every object this sync handed over (and so stored): a sync that
        # changes strategy part-way does not fetch those again.
        self.fetched: dict[str, str] = {}

    @property
    def path(self) -> str:
        return urlsplit(self.calendar.remote_id).path

    def list_first(self, exc: TimedOut) -> Iterator[ChangeBatch]:
        """The server did not answer a request for the whole calendar in time: from now on
        this calendar's full syncs list it first, then fetch in batches. Yields an empty batch
        that says so, kept at once: if the listing fails too, the retry starts with it."""
        logger.info("%s: %s Listing it first, then fetching in batches.", self.path, exc)
        self.by_listing = True
        yield ChangeBatch(fetching=self.learnt())

    def learnt(self) -> Fetching | None:
        """What this sync learnt since it last said, for the batch it goes with."""
        now = Fetching(
            by_listing=self.by_listing, batch=0 if self.size == batch_size() else self.size
        )
        if now == self._kept:
            return None
        self._kept = now
        return now

    def handed(self, batch: ChangeBatch) -> ChangeBatch:
        """`batch`, noted as handed over: the sync resumes only once it is stored."""
        for obj in batch.objects:
            self.fetched[obj.href] = obj.etag
        return batch

    def add(self, batch: ChangeBatch, item: Item) -> None:
        """Parse one object into `batch` (or into its skipped list, if it cannot be read)."""
        try:
            events = parse_object(item.data, default_timezone=self.calendar.timezone)
        except MalformedObject as exc:
            batch.skipped.append(SkippedObject(href=unquote(item.href), reason=str(exc)[:300]))
            return
        batch.objects.append(
            RemoteObject(href=item.href, etag=item.etag, events=events, raw=item.data)
        )

    def fetch(
        self,
        hrefs: list[str],
        deleted: list[str],
        cursor: Cursor,
        *,
        listing_cut: bool = False,
        listed: int = 0,
    ) -> Iterator[ChangeBatch]:
        """The objects at `hrefs` in multiget batches, `deleted` with the first, `cursor` with the
        last, but only once every object came back (or is gone) from a complete listing:
        otherwise the next sync starts again from the old cursor and asks again. `listed`: how
        many objects the listing held (progress), of which `hrefs` are to be fetched."""
        complete = not listing_cut
        position, first = 0, True
        while first or position < len(hrefs):
            batch = ChangeBatch()
            if position < len(hrefs):
                chunk = hrefs[position : position + self.size]
                fetched = self._multiget_in_time(chunk)
                if fetched is None:
                    continue  # asked again in a smaller batch
                batch, not_sent = fetched
                position += len(chunk)
                complete = complete and not not_sent
            if first:
                batch.deleted_hrefs = list(deleted)
                batch.listed, batch.unchanged = listed, max(0, listed - len(hrefs))
                if listing_cut:
                    batch.skipped.append(SkippedObject(href=self.path, reason=LISTING_CUT))
                first = False
            if position >= len(hrefs) and complete:
                batch.cursor = cursor
            batch.fetching = self.learnt()
            yield self.handed(batch)

    def _multiget_in_time(self, hrefs: list[str]) -> tuple[ChangeBatch, list[str]] | None:
        """`multiget(hrefs)`, or None (and a smaller batch size) when it took too long."""
        started = time.monotonic()
        try:
            fetched = self.multiget(hrefs)
        except TimedOut as exc:
            if len(hrefs) == 1:
                raise
            self.size = max(1, len(hrefs) // 2)
            logger.info("%s: %s Asking for %d objects at a time.", self.path, exc, self.size)
            return None
        took = (time.monotonic() - started) / settings.CALY_HTTP_TIMEOUT
        if took > SHRINK_ABOVE:
            self.size = max(1, len(hrefs) // 2)
        elif took < GROW_BELOW and len(hrefs) == self.size:
            self.size = min(batch_size(), self.size * 2)
        return fetched

    def multiget(self, hrefs: list[str]) -> tuple[ChangeBatch, list[str]]:
        """The objects at `hrefs`, and the hrefs the server neither sent nor called gone (404).
        What an answer leaves out is asked for again as long as each answer brings some."""
        batch = ChangeBatch()
        wanted = {normalize_href(h): h for h in hrefs}
        while wanted:
            self.checkpoint()
            body = (
                MULTIGET_HEAD
                + "".join(f"<d:href>{xml_escape(h)}</d:href>" for h in wanted.values())
                + "</c:calendar-multiget>"
            )
            came = 0
            # RFC 4791 §7.9: no Depth header on calendar-multiget.
            for item in self.dav.multistatus("REPORT", self.calendar.remote_id, body, depth=None):
                key = normalize_href(item.href)
                if key not in wanted:
                    continue
                if item.status == 404:
                    # Gone between listing and fetching; the next sync reports the deletion.
                    del wanted[key]
                    came += 1
                elif item.status == 200 and item.data is not None:
                    del wanted[key]
                    came += 1
                    self.add(batch, item)
            if not came:
                break
        for href in wanted.values():
            batch.skipped.append(SkippedObject(href=unquote(href), reason=NOT_SENT))
        if wanted:
            logger.warning("%s: %d objects asked for were not sent", self.path, len(wanted))
        return batch, list(wanted.values())
