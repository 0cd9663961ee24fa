"""A calendar provider with a controlled duration, for queue tests and benchmarks.

Registered as provider "fake" by the test settings (CALY_EXTRA_PROVIDERS in tests/settings.py), for
the suite and the workers it starts; accounts describe their behaviour in the URL query:

    http://fake.invalid/<key>?delay=0.05&batches=2&events=3&transient=1&retry_after=2

- `delay`: seconds each request takes (discovery is one request, each batch of changes one);
- `events`: events in the calendar, fetched in `batches` batches (fewer when some are
  already stored); the calendar's CTag is the number of events, and once a sync stored it the
  next one asks only for the CTag (one request), as against a CalDAV server;
- `transient`: the first N syncs of the account fail with a TransientError (429-like), with
  `retry_after` seconds as the server's Retry-After.

With CALY_FAKE_PROVIDER_LOG set, every sync appends `{"key", "pid", "event", "at"}` lines to that
file (event "start", then "end" or "failed"), so a test can see which process runs what, and that
syncs of one account never overlapped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

from sync.engine import listing_diff
from sync.providers.base import Provider, StoredEtags, TransientError
from sync.remote import ChangeBatch, Cursor, Fetching, RemoteCalendar, RemoteEvent, RemoteObject

LOG_ENV = "CALY_FAKE_PROVIDER_LOG"


def fake_url(key: str, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"http://fake.invalid/{key}" + (f"?{query}" if query else "")


def read_log(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class FakeProvider(Provider):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        parts = urlsplit(self.url)
        self.key = parts.path.strip("/")
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.delay = float(q.get("delay", 0))
        self.batches = max(int(q.get("batches", 1)), 1)
        self.events = int(q.get("events", 0))
        self.transient = int(q.get("transient", 0))
        self.retry_after = float(q["retry_after"]) if "retry_after" in q else None
        self.started = None
        self.home_url = self.home_url or f"http://fake.invalid/{self.key}/"

    def _request(self) -> None:
        if self.delay:
            time.sleep(self.delay)

    def discover(self) -> list[RemoteCalendar]:
        log = os.environ.get(LOG_ENV)
        earlier = 0
        if self.transient and log:
            earlier = sum(
                1 for e in read_log(log) if e["key"] == self.key and e["event"] == "start"
            )
        self.started = True
        self._log("start")
        if earlier < self.transient:
            self.started = None
            self._log("failed")
            raise TransientError(
                "The calendar server is rate limiting (HTTP 429).",
                retry_after=self.retry_after,
            )
        self._request()
        return [RemoteCalendar(remote_id=f"http://fake.invalid/{self.key}/cal/", name="Fake")]

    def changes(
        self,
        calendar: RemoteCalendar,
        *,
        cursor: Cursor,
        stored_etags: StoredEtags,
        fetching: Fetching | None = None,
    ) -> Iterator[ChangeBatch]:
        ctag = str(self.events)
        if cursor.ctag == ctag:  # like a CalDAV server whose CTag did not move: one request
            self._request()
            yield ChangeBatch(cursor=Cursor(ctag=ctag))
            return
        listed = {f"/{self.key}/cal/e{i}.ics": '"1"' for i in range(self.events)}
        wanted, gone = listing_diff(stored_etags(), listed)
        # Like a real server: a full calendar takes `batches` requests, what is left fewer.
        per_batch = max(-(-self.events // self.batches), 1)
        batches = max(-(-len(wanted) // per_batch), 1)
        for n in range(batches):
            self._request()
            chunk = wanted[n * per_batch : (n + 1) * per_batch]
            last = n == batches - 1
            yield ChangeBatch(
                objects=[self._object(href) for href in chunk],
                deleted_hrefs=gone if last else [],
                cursor=Cursor(ctag=ctag) if last else None,
            )

    def _object(self, href: str) -> RemoteObject:
        n = href.rsplit("/e", 1)[1].removesuffix(".ics")
        start = dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC) + dt.timedelta(days=int(n))
        event = RemoteEvent(
            uid=f"{self.key}-{n}@fake",
            summary=f"Event {n}",
            start=start,
            end=start + dt.timedelta(hours=1),
        )
        return RemoteObject(href=href, etag='"1"', events=(event,), raw="")

    def close(self) -> None:
        if self.started is not None:
            self._log("end")
            self.started = None

    def _log(self, event: str) -> None:
        path = os.environ.get(LOG_ENV)
        if not path:
            return
        line = json.dumps({"key": self.key, "pid": os.getpid(), "event": event, "at": time.time()})
        # One short O_APPEND write per line: lines from several processes never interleave.
        with open(path, "a") as f:
            f.write(line + "\n")
