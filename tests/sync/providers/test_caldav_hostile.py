"""CalDAV servers that never finish, cut their answers short, refuse what they offer or send XML
meant to exhaust a worker: real Radicale and Xandikos behind the tests' DAV proxy.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from calendars.models import Calendar
from sync import selectors
from sync.providers.caldav import CalDAVProvider
from sync.providers.caldav.dav import MAX_CONTINUATIONS
from sync.providers.caldav.fetching import LISTING_CUT, NOT_SENT
from sync.remote import Cursor
from tests.support.caldav_servers import vevent
from tests.support.dav_proxy import HOSTILE, DAVProxy, rss_kib
from tests.sync.providers.caldav_helpers import (
    calendar_of,
    connect,
    counts,
    only,
    rows,
    run_sync,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def seed(server, cal: str, count: int) -> None:
    for i in range(count):
        server.put(cal, f"e{i}.ics", vevent(f"e{i}@example.com", summary=f"Meeting {i}"))


def summaries(calendar: Calendar) -> dict[str, str]:
    return {uid: event.summary for (uid, _), event in rows(calendar).items()}


def provider_on(proxy: DAVProxy, server) -> CalDAVProvider:
    return CalDAVProvider(
        url=proxy.url + "/", username=server.user, credentials={"password": "secret-password"}
    )


def remote_of(provider: CalDAVProvider, cal: str):
    return next(c for c in provider.discover() if c.remote_id.rstrip("/").endswith("/" + cal))


class Stopped(Exception):
    pass


def stop_after(calls: int):
    """A checkpoint as the runner's: it raises once the sync has to stop (here, after `calls`)."""
    seen = []

    def checkpoint():
        seen.append(1)
        if len(seen) > calls:
            raise Stopped()

    return checkpoint


# --- item 4: endless continuations -----------------------------------------------------------
@pytest.mark.parametrize("server", ["radicale"], indirect=True)
@pytest.mark.parametrize("stored", [False, True], ids=["first-sync", "later-sync"])
def test_endless_continuations_stop_at_the_runners_checkpoint(server, cal, proxy, stored):
    """A server that answers every sync-collection with a 507 and a new token is asked again
    only while the sync may go on: the checkpoint (deadline, hand-back, lease) is consulted
    before every continuation."""
    seed(server, cal, 2)
    provider = provider_on(proxy, server)
    remote = remote_of(provider, cal)
    proxy.endless = True
    proxy.requests.clear()
    provider.checkpoint = stop_after(5)
    known = {f"{server.home_path}{cal}/e0.ics": '"old"'} if stored else {}
    cursor = Cursor(sync_token="http://caly.invalid/page/0/-") if stored else Cursor()
    with pytest.raises(Stopped):
        list(provider.changes(remote, cursor=cursor, stored_etags=lambda: known))
    assert proxy.count(report="sync-collection") <= 5


@pytest.mark.parametrize("server", ["radicale"], indirect=True)
def test_endless_continuations_end_with_a_readable_error(server, cal, proxy):
    seed(server, cal, 1)
    provider = provider_on(proxy, server)
    remote = remote_of(provider, cal)
    proxy.endless = True
    proxy.requests.clear()
    with pytest.raises(Exception, match="never finished its listing"):
        list(provider.changes(remote, cursor=Cursor(), stored_etags=lambda: {"/x.ics": '"1"'}))
    assert proxy.count(report="sync-collection") == MAX_CONTINUATIONS <= 1_000


@pytest.mark.parametrize("server", ["radicale"], indirect=True)
def test_a_sync_in_endless_continuations_stops_at_its_deadline(user, server, cal, proxy, settings):
    """Through the runner: the sync deadline stops the listing within a request, and the run is
    queued again to continue (RabbitMQ closes channels that hold a message too long)."""
    seed(server, cal, 2)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    settings.CALY_SYNC_DEADLINE_SECONDS = 0
    proxy.endless = True
    proxy.requests.clear()
    run = run_sync(account)
    assert proxy.count(report="sync-collection") <= 1
    assert run.state == "queued", run.error
    assert "took longer than" in run.error


# --- item 5: XML that eats memory --------------------------------------------------------------
@pytest.mark.parametrize("server", ["radicale"], indirect=True)
@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_hostile_xml_fails_the_run_within_64_mib(user, server, cal, proxy, shape):
    """Whatever a server streams (tens of MiB of elements, nesting, text, comments, attributes),
    the worker's memory grows by less than 64 MiB and the run fails in words, changing nothing;
    the next sync against a sane answer works."""
    seed(server, cal, 2)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 2, 0, 0)
    calendar = calendar_of(account, cal)
    token = Calendar.objects.get(pk=calendar.pk).sync_token
    server.put(cal, "e0.ics", vevent("e0@example.com", summary="Changed"))

    proxy.hostile_xml = shape
    before = rss_kib()
    run = run_sync(account)
    grown = max([*proxy.rss_kib, rss_kib()]) - before
    assert grown < 64 * 1024, f"grew by {grown // 1024} MiB"
    assert run.state == "failed", run.error
    assert "Caly does not read such answers" in run.error, run.error
    assert summaries(calendar)["e0@example.com"] == "Meeting 0"
    assert Calendar.objects.get(pk=calendar.pk).sync_token == token

    proxy.hostile_xml = ""
    assert counts(run_sync(account)) == ("succeeded", 0, 1, 0)
    assert summaries(calendar)["e0@example.com"] == "Changed"


# --- item 6: truncated listings ----------------------------------------------------------------
def test_a_listing_cut_short_deletes_nothing_and_keeps_the_cursor(user, server, cal, proxy):
    """PROPFIND Depth 1 answered with a 507 on the collection and one object (a server without
    sync-collection): nothing it left out is deleted, and the ctag stays so that the next
    sync lists again."""
    proxy.hide_sync = True
    seed(server, cal, 4)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 4, 0, 0)
    calendar = calendar_of(account, cal)
    ctag = Calendar.objects.get(pk=calendar.pk).ctag

    server.delete(cal, "e3.ics")
    proxy.cut_listing_of = f"{server.home_path}{cal}/"
    run = run_sync(account)
    assert run.state == "succeeded", run.error
    assert run.deleted == 0
    assert len(rows(calendar)) == 4
    assert Calendar.objects.get(pk=calendar.pk).ctag == ctag
    assert [s["reason"] for s in run.skipped] == [LISTING_CUT]

    proxy.cut_listing_of = ""
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 1)
    assert sorted(summaries(calendar)) == [f"e{i}@example.com" for i in range(3)]


def test_objects_a_multiget_leaves_out_are_asked_for_again_not_lost(user, server, cal, proxy):
    seed(server, cal, 3)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 3, 0, 0)
    calendar = calendar_of(account, cal)
    token = Calendar.objects.get(pk=calendar.pk).sync_token

    for i in range(3):
        server.put(cal, f"e{i}.ics", vevent(f"e{i}@example.com", summary="Changed"))
    proxy.withhold = {f"{server.home_path}{cal}/e1.ics"}
    run = run_sync(account)
    assert counts(run) == ("succeeded", 0, 2, 0)
    assert [(s["href"].rsplit("/", 1)[1], s["reason"]) for s in run.skipped] == [
        ("e1.ics", NOT_SENT)
    ]
    assert Calendar.objects.get(pk=calendar.pk).sync_token == token  # not moved on

    proxy.withhold = set()
    assert counts(run_sync(account)) == ("succeeded", 0, 1, 0)
    assert summaries(calendar) == {f"e{i}@example.com": "Changed" for i in range(3)}
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)


def test_a_multiget_answered_in_parts_is_completed_in_the_same_sync(user, server, cal, proxy):
    """A server that sends at most one object per multiget answer is asked for the rest."""
    seed(server, cal, 3)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 3, 0, 0)
    calendar = calendar_of(account, cal)

    for i in range(3):
        server.put(cal, f"e{i}.ics", vevent(f"e{i}@example.com", summary="Changed"))
    proxy.multiget_limit = 1
    proxy.requests.clear()
    run = run_sync(account)
    assert counts(run) == ("succeeded", 0, 3, 0) and run.skipped == []
    assert [r.hrefs for r in proxy.requests if r.report == "calendar-multiget"] == [3, 2, 1]
    assert summaries(calendar) == {f"e{i}@example.com": "Changed" for i in range(3)}
    assert counts(run_sync(account)) == ("succeeded", 0, 0, 0)


# --- item 8: sync-collection offered, then refused ---------------------------------------------
def test_a_refused_sync_collection_is_remembered_for_a_day(user, server, cal, proxy):
    """The provider reports the refusal in the calendar's cursor (stored with it); given that
    cursor back it asks no REPORT for a day and gets the ctag with the calendar list, so one
    changed event costs 3 requests; a day later it tries sync-collection again."""
    proxy.refuse_sync = True
    seed(server, cal, 3)
    account = connect(user, server, base_url=proxy.url)
    only(account, cal)
    assert counts(run_sync(account)) == ("succeeded", 3, 0, 0)
    calendar = Calendar.objects.get(pk=calendar_of(account, cal).pk)
    assert calendar.sync_refused_at is not None and calendar.ctag

    def changes(refused_at):
        cursor = Cursor(
            sync_token=calendar.sync_token, ctag=calendar.ctag, sync_refused_at=refused_at
        )
        provider = provider_on(proxy, server)
        provider.home_url = account.home_url
        provider.cursors = {calendar.remote_id: cursor}
        proxy.requests.clear()
        remote = remote_of(provider, cal)
        stored = lambda: selectors.stored_etags(calendar_id=calendar.pk)  # noqa: E731
        return list(provider.changes(remote, cursor=cursor, stored_etags=stored))

    (unchanged,) = changes(calendar.sync_refused_at)
    assert [(r.method, r.report) for r in proxy.requests] == [("PROPFIND", "")]
    assert unchanged.cursor.sync_refused_at == calendar.sync_refused_at

    server.put(cal, "e1.ics", vevent("e1@example.com", summary="Moved"))
    batches = changes(calendar.sync_refused_at)
    assert [(r.method, r.report, r.hrefs) for r in proxy.requests] == [
        ("PROPFIND", "", 0),
        ("PROPFIND", "", 0),
        ("REPORT", "calendar-multiget", 1),
    ]
    assert [o.href.rsplit("/", 1)[1] for b in batches for o in b.objects] == ["e1.ics"]

    a_day_ago = timezone.now() - dt.timedelta(days=1, minutes=1)
    batches = changes(a_day_ago)
    assert proxy.count(report="sync-collection") == 1  # asked again, refused again
    assert batches[-1].cursor.sync_refused_at > a_day_ago
