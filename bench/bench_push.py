"""Push in, webhooks out: a change on Google reaching an app's webhook, end to end.

Measured in one run, with real worker processes (CALY_WORKER_PROCESSES x CALY_WORKER_THREADS,
2 x 8 as `make up` starts them, here consuming every queue, the webhooks one included) on the
real broker; the Google fake (tests/support/fake_google.py) serving from a thread of this
process, since the benchmark makes its changes and reads its notifications directly; Caly's
web process (`manage.py runserver --noreload`, as the Procfile's `web`) at CALY_PUBLIC_URL,
where the fake POSTs its notifications; and the app's end, a webhook receiver of this process
(an HTTP/1.1 server thread noting when each delivery arrives):
- freshness: FRESH changes on Google one at a time (an insert, then an update of that event,
  and so on), with idle workers: from just before the change on the fake to the receiver
  getting the `events.changed` delivery naming the event. Goal: p50 <= 1 s, p95 <= 2 s. Its
  parts: change -> the fake's notification POST, notification -> run queued, queued -> run
  started, run started -> the batch (and its delivery) recorded, recorded -> received, and the
  run's duration;
- requests per push-triggered sync: the API requests the fake saw during each of those changes,
  and per run of trigger "push". Goal: 1 (one events.list by sync token, no calendarList);
- burst: BURST_CALENDARS calendars (one Google account each, each with its channel),
  BURST_CHANGES changes to each made round-robin as fast as the fake takes them (1,000):
  the notifications the fake sent for them (it batches changes made while one is still on its
  way, as Google does), the sync runs they caused (goal: <= BURST_RUNS_GOAL, the calendars plus
  a tenth) and every change stored in Caly afterwards. Then the same again with one
  notification per change (1,000, a Google that batched nothing): the changes made with the
  fake's channels muted, the notifications POSTed by the benchmark, one at a time per channel
  and all channels at once; the hook's pace and answer times, the runs, every change stored;
- webhook delivery throughput: DELIVERIES `events.changed` deliveries recorded in one
  transaction (`deliveries_record`), published when it commits, sent by the workers to the
  receiver: deliveries/s from the commit to the last one received (and recorded as
  delivered); then DELIVERIES more published with no worker running (the publishing alone)
  and sent by workers started on the full queue (the sending alone, first to last arrival).
About 2 minutes on 2 cores.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests
from common import ROOT, report, setup_django

FRESH = int(os.environ.get("CALY_BENCH_PUSH_FRESH", 100))
WARMUP = 6  # changes nobody times first: every worker process and the web one warm up
BURST_CALENDARS = int(os.environ.get("CALY_BENCH_PUSH_CALENDARS", 50))
BURST_CHANGES = int(os.environ.get("CALY_BENCH_PUSH_CHANGES", 20))  # per calendar
BURST_RUNS_GOAL = BURST_CALENDARS + max(5, BURST_CALENDARS // 10)
# How long the benchmark's own notifications wait for the hook's answer (the fake: 2 s).
UNBATCHED_TIMEOUT_S = 10.0
DELIVERIES = int(os.environ.get("CALY_BENCH_PUSH_DELIVERIES", 1000))
FRESH_P50_GOAL_S, FRESH_P95_GOAL_S = 1.0, 2.0


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(values: list[float], q: int = 50) -> float:
    return percentile(values, q) * 1000


# --- the app's end: a webhook receiver ------------------------------------------------------
class Receiver:
    """Every delivery POSTed to it, with the time.time() it arrived; answers 200 at once."""

    def __init__(self):
        self.received: list[tuple[float, dict, str, bytes]] = []
        self.marks: dict[str, int] = {}  # deliveries received per data["bench"] mark
        self.connections: set[tuple] = set()  # (host, port) of every connection they came on
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as any real receiver allows

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                payload = json.loads(body)
                mark = payload["data"].get("bench")
                with receiver.arrived:
                    receiver.received.append(
                        (at, payload, self.headers.get("Caly-Signature", ""), body)
                    )
                    receiver.marks[mark] = receiver.marks.get(mark, 0) + 1
                    receiver.connections.add(self.client_address[:2])
                    receiver.arrived.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/caly-hook"

    def wait(self, condition, *, timeout: float, what: str):
        """Until condition(received) is true (checked at each arrival); returns its value."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                value = condition(self.received)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: not received within {timeout} s")
                self.arrived.wait(left)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed(secret: str, header: str, body: bytes) -> bool:
    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields["v1"])


# --- Caly's processes -----------------------------------------------------------------------
def start_web(port: int) -> tuple[subprocess.Popen, str]:
    """Caly's web process, as the Procfile runs it, on 127.0.0.1:port (its log in a file)."""
    from tests.support.polling import wait_for

    log = tempfile.NamedTemporaryFile(prefix="caly-bench-web-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=os.environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"runserver exited:\n{Path(log.name).read_text()}")
        try:
            # require_POST: a GET is a 405, once the server answers at all.
            return requests.get(f"http://127.0.0.1:{port}/hooks/google/", timeout=2).ok is False
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, interval=0.1, what="Caly's web process")
    return process, log.name


def connect(owner, person):
    """A Google account of `owner` for the fake's `person`, with its first sync done here."""
    from sync import services
    from sync.models import SyncRun

    account = services.account_connect(
        owner=owner,
        provider="google",
        name=f"Bench {person.email}",
        credentials={"refresh_token": person.refresh_token},
    )
    (run,) = services.sync_request(
        user=owner, account=account, trigger=SyncRun.Trigger.COMMAND, publish=False
    )
    services.sync_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    return account, account.calendars.get(selected=True)


def settled(accounts: list, *, timeout: float = 60) -> None:
    """No run of these accounts queued or running, none failed, and no delivery pending."""
    from sync.models import SyncRun, WebhookDelivery
    from tests.support.polling import wait_for

    def done() -> bool:
        busy = SyncRun.objects.filter(account__in=accounts, state__in=["queued", "running"])
        pending = WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING)
        return not busy.exists() and not pending.exists()

    wait_for(done, timeout=timeout, interval=0.005, what="the runs and deliveries to end")
    failed = SyncRun.objects.filter(account__in=accounts, state="failed").first()
    assert failed is None, f"run {failed.pk} failed: {failed.error}"


def when(moment: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(moment, tz=dt.UTC)


# --- 1 and 2: freshness, requests per push run ----------------------------------------------
def freshness(fake, person, account, calendar, channel_id: str, receiver: Receiver) -> dict:
    from calendars.models import Event
    from sync.models import SyncRun, WebhookDelivery

    def names(pk: int, after: int):
        def found(received):
            for at, payload, _, _ in received[after:]:
                data = payload["data"]
                if pk in data["created"] + data["updated"] + data["deleted"]:
                    return at, payload
            return None

        return found

    latencies: dict[str, list[float]] = {"insert": [], "update": []}
    parts: dict[str, list[float]] = {
        "change_to_notification": [],
        "notification_to_run_queued": [],
        "run_queued_to_started": [],
        "run_started_to_batch_recorded": [],
        "batch_recorded_to_received": [],
        "run_duration": [],
        "hook_answer": [],
    }
    requests_per_change: list[list[str]] = []
    push_runs_per_change: list[int] = []
    tokens_before = len(fake.token_requests)
    event_id = pk = None
    for i in range(WARMUP + FRESH):
        kind = "insert" if i % 2 == 0 else "update"
        seen = len(receiver.received)
        asked = len(fake.api_requests(person))
        t0 = time.time()
        if kind == "insert":
            created = fake.insert_event(
                person, summary=f"Fresh {i}", start=f"2026-04-{1 + i % 28:02}T09:00:00Z"
            )
            event_id = created["id"]

            def stored_pk(_received, uid=created["iCalUID"]):
                return (
                    Event.objects.filter(calendar=calendar, uid=uid)
                    .values_list("pk", flat=True)
                    .first()
                )

            # The delivery naming it can only come once the event is stored: look its id up
            # at each arrival until there is one.
            pk = receiver.wait(stored_pk, timeout=30, what=f"change {i} stored")
        else:
            fake.update_event(person, None, event_id, summary=f"Fresh {i} changed")
        t1, payload = receiver.wait(names(pk, seen), timeout=30, what=f"change {i}'s delivery")
        settled([account])
        if i < WARMUP:
            continue
        latencies[kind].append(t1 - t0)
        requests_per_change.append([r.method_id for r in fake.api_requests(person)[asked:]])
        runs = list(
            SyncRun.objects.filter(
                account=account, trigger=SyncRun.Trigger.PUSH, requested_at__gte=when(t0)
            ).order_by("pk")
        )
        push_runs_per_change.append(len(runs))
        run = runs[0]
        notification = next(
            n for n in fake.notifications(channel_id, state="exists") if n["at"] >= t0
        )
        recorded = WebhookDelivery.objects.get(pk=payload["id"]).created_at.timestamp()
        parts["change_to_notification"].append(notification["at"] - t0)
        parts["hook_answer"].append(notification["duration"])
        parts["notification_to_run_queued"].append(
            run.requested_at.timestamp() - notification["at"]
        )
        parts["run_queued_to_started"].append((run.started_at - run.requested_at).total_seconds())
        parts["run_started_to_batch_recorded"].append(recorded - run.started_at.timestamp())
        parts["batch_recorded_to_received"].append(t1 - recorded)
        parts["run_duration"].append((run.finished_at - run.started_at).total_seconds())

    every = latencies["insert"] + latencies["update"]
    counts = [len(r) for r in requests_per_change]
    per_run = [c / max(n, 1) for c, n in zip(counts, push_runs_per_change, strict=True)]
    calendar_lists = sum(r.count("calendar.calendarList.list") for r in requests_per_change)
    p50, p95 = percentile(every, 50), percentile(every, 95)
    figures = {
        "fresh_changes": len(every),
        "fresh_change_to_webhook_p50_s": p50,
        "fresh_change_to_webhook_p95_s": p95,
        "fresh_change_to_webhook_max_s": max(every),
        "fresh_change_to_webhook_p50_goal_s": FRESH_P50_GOAL_S,
        "fresh_change_to_webhook_p95_goal_s": FRESH_P95_GOAL_S,
        "fresh_change_to_webhook_p50_met": p50 <= FRESH_P50_GOAL_S,
        "fresh_change_to_webhook_p95_met": p95 <= FRESH_P95_GOAL_S,
        "fresh_insert_p50_s": percentile(latencies["insert"], 50),
        "fresh_update_p50_s": percentile(latencies["update"], 50),
    }
    for name, values in parts.items():
        figures[f"fresh_{name}_p50_ms"] = ms(values)
        figures[f"fresh_{name}_p95_ms"] = ms(values, 95)
    figures.update(
        {
            "push_runs_per_change_max": max(push_runs_per_change),
            "push_run_api_requests_max": max(per_run),
            "push_run_api_requests_mean": statistics.mean(per_run),
            "push_run_api_requests_detail": ", ".join(
                sorted({" + ".join(r) for r in requests_per_change})
            ),
            "push_run_calendar_list_requests": calendar_lists,
            "push_run_api_requests_goal": 1,
            "push_run_api_requests_met": max(per_run) <= 1 and calendar_lists == 0,
            "push_token_requests_during_fresh": len(fake.token_requests) - tokens_before,
        }
    )
    return figures


# --- 3. a burst of changes on many calendars ------------------------------------------------
class Burst:
    """BURST_CALENDARS Google accounts of one calendar each, each calendar with its channel."""

    def __init__(self, fake, owner):
        from sync import services

        self.fake = fake
        self.people = [fake.add_user() for _ in range(BURST_CALENDARS)]
        self.connected = [connect(owner, person) for person in self.people]
        self.accounts = [a for a, _ in self.connected]
        opened = services.channels_maintain()["opened"]
        assert len(opened) == BURST_CALENDARS, opened
        self.channels = [fake.channels(person)[0] for person in self.people]
        for channel in self.channels:
            fake.wait_for_notifications(1, channel["id"], state="sync", timeout=30)
        assert fake.wait_push_idle(timeout=30)
        self.expected: list[dict[str, str]] = [{} for _ in self.people]  # uid -> summary
        self.latest = [""] * len(self.people)
        self.round = 0

    def changes(self) -> tuple[float, float]:
        """BURST_CHANGES changes to every calendar, round-robin, as fast as the fake takes them
        (an insert, then an update of that event, ...); time.time() before and after."""
        started = time.time()
        for k in range(BURST_CHANGES):
            for n, person in enumerate(self.people):
                summary = f"Burst {self.round}.{n}.{k}"
                if k % 2 == 0:
                    created = self.fake.insert_event(
                        person, summary=summary, start=f"2026-05-{1 + k % 28:02}T10:00:00Z"
                    )
                    self.latest[n] = created["id"]
                    self.expected[n][created["iCalUID"]] = summary
                else:
                    changed = self.fake.update_event(person, None, self.latest[n], summary=summary)
                    self.expected[n][changed["iCalUID"]] = summary
        self.round += 1
        return started, time.time()

    def requests_so_far(self) -> dict[str, int]:
        return {person.email: len(self.fake.api_requests(person)) for person in self.people}

    def outcome(self, prefix: str, started: float, made: float, asked: dict) -> dict:
        """Once every run ended: the runs caused, the requests made, every change stored."""
        from calendars.models import Event
        from sync.models import SyncRun

        settled(self.accounts, timeout=180)
        runs = list(
            SyncRun.objects.filter(account__in=self.accounts, requested_at__gte=when(started))
        )
        ended = max(r.finished_at for r in runs).timestamp()
        made_requests: dict[str, int] = {}
        for person in self.people:
            for r in self.fake.api_requests(person)[asked[person.email] :]:
                made_requests[r.method_id] = made_requests.get(r.method_id, 0) + 1
        missing = 0
        for (_, calendar), want in zip(self.connected, self.expected, strict=True):
            have = dict(Event.objects.filter(calendar=calendar).values_list("uid", "summary"))
            missing += sum(1 for uid, summary in want.items() if have.get(uid) != summary)
        triggers: dict[str, int] = {}
        for r in runs:
            triggers[r.trigger] = triggers.get(r.trigger, 0) + 1
        changes = BURST_CALENDARS * BURST_CHANGES
        return {
            f"{prefix}_sync_runs": len(runs),
            f"{prefix}_sync_runs_by_trigger": ", ".join(
                f"{k} {v}" for k, v in sorted(triggers.items())
            ),
            f"{prefix}_sync_runs_with_changes": sum(
                1 for r in runs if r.created or r.updated or r.deleted
            ),
            f"{prefix}_sync_runs_goal": BURST_RUNS_GOAL,
            f"{prefix}_sync_runs_met": len(runs) <= BURST_RUNS_GOAL,
            f"{prefix}_events_list_requests": made_requests.get("calendar.events.list", 0),
            f"{prefix}_calendar_list_requests": made_requests.get("calendar.calendarList.list", 0),
            f"{prefix}_changes_made_per_s": changes / (made - started),
            f"{prefix}_changes_not_stored": missing,
            f"{prefix}_every_change_stored_met": missing == 0,
            f"{prefix}_first_change_to_last_run_end_s": ended - started,
        }


def burst_batched(burst: Burst) -> dict:
    """The fake's own notifications: it batches the changes made while one is on its way."""
    asked = burst.requests_so_far()
    started, made = burst.changes()
    assert burst.fake.wait_push_idle(timeout=120), "the fake's notifications did not all go out"
    ids = {c["id"] for c in burst.channels}
    sent = [
        n
        for n in burst.fake.notifications(state="exists")
        if n["channel_id"] in ids and n["at"] >= started
    ]
    figures = {
        "burst_calendars": BURST_CALENDARS,
        "burst_changes": BURST_CALENDARS * BURST_CHANGES,
        "burst_notifications_sent": len(sent),
        "burst_notifications_not_200": sum(1 for n in sent if n["status"] != 200),
    }
    figures.update(burst.outcome("burst", started, made, asked))
    return figures


def burst_unbatched(burst: Burst) -> dict:
    """One notification per change, as a Google that batched nothing would send them: the
    changes made with the fake's channels muted, then BURST_CHANGES notifications for each
    channel POSTed to /hooks/google/, one at a time per channel (as Google sends a channel's
    messages in order), all channels at once."""
    fake = burst.fake
    calendars = [person.calendars[person.primary] for person in burst.people]
    with fake._lock:  # the fake's own notifications off for these changes
        muted = [list(c.channels) for c in calendars]
        for calendar in calendars:
            calendar.channels.clear()
    asked = burst.requests_so_far()
    try:
        started, made = burst.changes()
    finally:
        with fake._lock:
            for calendar, channels in zip(calendars, muted, strict=True):
                calendar.channels[:] = channels
    answers: list[tuple[float, int]] = []
    lock = threading.Lock()

    def send(channel: dict) -> None:
        address = urlsplit(channel["address"])
        for number in range(BURST_CHANGES):
            headers = {
                "Content-Type": "application/json; utf-8",
                "Content-Length": "0",
                "X-Goog-Channel-ID": channel["id"],
                "X-Goog-Channel-Token": channel["token"],
                "X-Goog-Resource-ID": channel["resource_id"],
                "X-Goog-Resource-URI": channel["resource_uri"],
                "X-Goog-Resource-State": "exists",
                "X-Goog-Message-Number": str(channel["messages"] + 1 + number),
            }
            begun = time.time()
            connection = http.client.HTTPConnection(
                address.hostname, address.port, timeout=UNBATCHED_TIMEOUT_S
            )
            try:
                connection.request("POST", address.path, body=b"", headers=headers)
                status = connection.getresponse().status
            except OSError:  # refused or timed out: Google would try it again later
                status = None
            finally:
                connection.close()
            with lock:
                answers.append((time.time() - begun, status))

    posted = time.time()
    channels = [fake.channels(person)[0] for person in burst.people]  # their message numbers
    senders = [threading.Thread(target=send, args=(c,)) for c in channels]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done = time.time()
    durations = [d for d, _ in answers]
    figures = {
        "unbatched_notifications": len(answers),
        "unbatched_notifications_not_200": sum(1 for _, s in answers if s != 200),
        "unbatched_notifications_unanswered": sum(1 for _, s in answers if s is None),
        "unbatched_hook_answer_over_2s": sum(1 for d, _ in answers if d > 2),
        "unbatched_hook_notifications_per_s": len(answers) / (done - posted),
        "unbatched_hook_answer_p50_ms": ms(durations),
        "unbatched_hook_answer_p95_ms": ms(durations, 95),
    }
    figures.update(burst.outcome("unbatched", started, made, asked))
    return figures


# --- 4. webhook delivery throughput ---------------------------------------------------------
def record_deliveries(account, mark: str) -> tuple[list, float, float, float]:
    """DELIVERIES events.changed deliveries recorded in one transaction (published when it
    commits): their ids, and time.time() at the start, at the commit, after the commit."""
    from django.db import transaction

    from sync.models import Webhook
    from sync.services.webhooks import deliveries_record

    started = time.time()
    ids = []
    with transaction.atomic():
        for n in range(DELIVERIES):
            (delivery,) = deliveries_record(
                account_id=account.pk,
                type=Webhook.Type.EVENTS_CHANGED,
                data={
                    "account": account.pk,
                    "created": [],
                    "updated": [],
                    "deleted": [],
                    "bench": mark,
                    "n": n,
                },
            )
            ids.append(delivery.pk)
        committing = time.time()
    return ids, started, committing, time.time()  # the commit ran every on_commit publish


def all_received(receiver: Receiver, ids: list, mark: str) -> tuple[list[float], dict]:
    """Arrival times of the deliveries marked `mark`, once every one came and was recorded as
    delivered; and what their rows say."""
    from sync.models import WebhookDelivery
    from tests.support.polling import wait_for

    receiver.wait(
        lambda _: receiver.marks.get(mark, 0) >= DELIVERIES, timeout=180, what="every delivery"
    )
    delivered = WebhookDelivery.objects.filter(pk__in=ids, state=WebhookDelivery.State.DELIVERED)
    wait_for(lambda: delivered.count() == DELIVERIES, timeout=60, what="every delivery marked")
    rows = {
        "marked": max(delivered.values_list("delivered_at", flat=True)).timestamp(),
        "attempts": sum(delivered.values_list("attempts", flat=True)),
    }
    arrivals = [at for at, p, _, _ in receiver.received if p["data"].get("bench") == mark]
    return sorted(arrivals), rows


def throughput_live(receiver: Receiver, account) -> dict:
    """Recorded, published and sent at once, the workers running (as a big sync batch would)."""
    mark = uuid.uuid4().hex
    ids, started, committing, published = record_deliveries(account, mark)
    arrivals, rows = all_received(receiver, ids, mark)
    span = arrivals[-1] - committing
    return {
        "webhook_deliveries": DELIVERIES,
        "webhook_record_in_one_transaction_s": committing - started,
        "webhook_commit_and_publish_s": published - committing,
        "webhook_publish_per_s_while_sending": DELIVERIES / (published - committing),
        "webhook_commit_to_last_received_s": span,
        "webhook_deliveries_per_s": DELIVERIES / span,
        "webhook_commit_to_last_marked_delivered_s": rows["marked"] - committing,
        "webhook_attempts": rows["attempts"],
        "webhook_received_twice": len(arrivals) - DELIVERIES,
    }


def throughput_backlog(receiver: Receiver, account, start_workers) -> dict:
    """No worker running: recorded and published (the publishing alone), then the workers
    started on the full queue (the sending alone: first to last arrival)."""
    mark = uuid.uuid4().hex
    ids, _, committing, published = record_deliveries(account, mark)
    start_workers()
    arrivals, rows = all_received(receiver, ids, mark)
    return {
        "webhook_backlog_publish_per_s_alone": DELIVERIES / (published - committing),
        "webhook_backlog_first_to_last_received_s": arrivals[-1] - arrivals[0],
        "webhook_backlog_deliveries_per_s": (DELIVERIES - 1) / (arrivals[-1] - arrivals[0]),
        "webhook_backlog_attempts": rows["attempts"],
        "webhook_backlog_received_twice": len(arrivals) - DELIVERIES,
    }


# --- the run --------------------------------------------------------------------------------
def main() -> None:
    from tests.support.fake_google import FakeGoogle
    from tests.support.ports import free_port

    fake = FakeGoogle().start()
    port = free_port()
    for name, value in fake.settings().items():
        os.environ[name] = value
    os.environ["CALY_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    os.environ.setdefault("CALY_WEBHOOK_RETRY_BASE_SECONDS", "1")
    os.environ["CALY_ALLOW_PRIVATE_URLS"] = "1"  # the receiver is on loopback
    setup_django()
    web = None
    try:
        web, web_log = start_web(port)
        run(fake, web_log)
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=10)
        fake.stop()


def delete_webhook_queue() -> None:
    """bench/run.py deletes the run's sync and maintenance queues; the workers declared this
    one too."""
    from django.conf import settings
    from kombu import Connection

    try:
        with Connection(settings.CELERY_BROKER_URL) as conn:
            conn.default_channel.queue_delete(settings.CALY_WEBHOOK_QUEUE)
    except Exception as exc:  # tidying up only
        print(f"  (could not delete {settings.CALY_WEBHOOK_QUEUE}: {exc})")


def run(fake, web_log: str) -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from sync import services
    from sync.models import WatchChannel
    from tests.support.workers import start_worker

    processes, threads = settings.CALY_WORKER_PROCESSES, settings.CALY_WORKER_THREADS
    figures: dict = {
        "worker_processes": processes,
        "threads_per_process": threads,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }
    receiver = Receiver()
    owner = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:6]}")
    workers: list = []

    def start_workers() -> None:
        workers[:] = [start_worker(threads=threads, wait=False) for _ in range(processes)]
        for worker in workers:
            worker.wait_ready()

    def stop_workers() -> None:
        for worker in workers:
            worker.stop()
        workers.clear()

    began = time.time()
    try:
        person = fake.add_user()
        account, calendar = connect(owner, person)
        _, secret = services.webhook_create(
            owner=owner, url=receiver.url, events=["events.changed"]
        )
        assert services.channels_maintain()["opened"] == [calendar.pk]
        channel_id = str(WatchChannel.objects.get(calendar=calendar).channel_id)
        (sync_message,) = fake.wait_for_notifications(1, channel_id, state="sync", timeout=30)
        assert sync_message["status"] == 200, (sync_message, Path(web_log).read_text()[-2000:])
        start_workers()

        print(f"  freshness: {FRESH} changes one at a time…", flush=True)
        figures.update(freshness(fake, person, account, calendar, channel_id, receiver))

        print(
            f"  burst: {BURST_CHANGES} changes on each of {BURST_CALENDARS} calendars…", flush=True
        )
        burst = Burst(fake, owner)
        figures.update(burst_batched(burst))
        print("  the same, one notification per change…", flush=True)
        figures.update(burst_unbatched(burst))

        print(f"  {DELIVERIES} webhook deliveries at once, workers running…", flush=True)
        figures.update(throughput_live(receiver, account))
        print(f"  {DELIVERIES} webhook deliveries queued before the workers start…", flush=True)
        stop_workers()
        figures.update(throughput_backlog(receiver, account, start_workers))

        bad = sum(1 for _, _, header, body in receiver.received if not signed(secret, header, body))
        figures["webhook_deliveries_received_in_all"] = len(receiver.received)
        # Keep-alive: the receiver allows it; every new connection is a new TCP (TLS) handshake.
        figures["webhook_connections_they_came_on"] = len(receiver.connections)
        figures["webhook_bad_signatures"] = bad
        figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
        figures["bench_wall_s"] = time.time() - began
    finally:
        stop_workers()
        receiver.stop()
        delete_webhook_queue()
    report("push", figures)


if __name__ == "__main__":
    main()
