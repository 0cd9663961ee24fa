"""`manage.py sync_user USERNAME [--account ID] [--wait] [--inline]`: sync a user's accounts from a
shell, through the same service as POST /api/sync/, and watch the runs' progress live."""

from __future__ import annotations

import sys
import threading
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from calendars.models import Account
from sync import services
from sync.models import SyncRun

BAR_WIDTH = 24
# A run still queued after this long gets a hint that no worker may be consuming.
QUEUED_HINT_SECONDS = 15


class Command(BaseCommand):
    help = (
        "Queue a sync of USERNAME's active accounts (or one of them) and optionally watch it. "
        "Exits non-zero if the user or account is unknown, RabbitMQ cannot be reached, or a "
        "sync fails."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--account", type=int, metavar="ID", help="sync only this account")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="show each run's progress until every run has finished",
        )
        parser.add_argument(
            "--inline",
            action="store_true",
            help="sync in this process, without RabbitMQ or a worker (for debugging); "
            "implies --wait",
        )
        parser.add_argument(
            "--interval", type=float, default=0.5, help="seconds between progress updates"
        )

    def handle(self, *args, username, account, wait, inline, interval, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        target = self._account(user, account) if account is not None else None
        if (
            target is None
            and not Account.objects.filter(owner=user, status=Account.Status.ACTIVE).exists()
        ):
            raise CommandError(self._nothing_to_sync(user))
        try:
            runs = services.sync_request(
                user=user, account=target, trigger=SyncRun.Trigger.COMMAND, publish=not inline
            )
        except services.AccountNotSyncable as exc:
            raise CommandError(str(exc)) from None
        except services.BrokerUnavailable as exc:
            raise CommandError(
                f"{exc} Is RabbitMQ running at {_broker_uri()}? "
                "(--inline syncs in this process without it.)"
            ) from None
        for run in runs:
            self.stdout.write(f"Sync #{run.pk} of {run.account} {_queued_text(run)}")
        if not (wait or inline):
            self.stdout.write("Watch it with --wait, or GET /api/sync/<id>/.")
            return
        watcher = Watcher(self.stdout, [r.pk for r in runs], interval=interval, inline=inline)
        try:
            if inline:
                for run in runs:
                    watcher.run_inline(run.pk)
            else:
                watcher.until_finished()
        except KeyboardInterrupt:
            self.stderr.write("Stopped watching; queued and running syncs carry on.")
            sys.exit(130)
        failed = watcher.report()
        if failed:
            raise CommandError(f"{failed} of {len(runs)} sync(s) did not succeed.")

    def _account(self, user, account_id: int) -> Account:
        account = Account.objects.filter(pk=account_id).first()
        if account is None:
            raise CommandError(f"No account with id {account_id}.")
        if account.owner_id != user.pk:
            raise CommandError(
                f"Account {account_id} belongs to another user, not {user.get_username()}."
            )
        return account

    def _nothing_to_sync(self, user) -> str:
        others = list(Account.objects.filter(owner=user).exclude(status=Account.Status.ACTIVE))
        if not others:
            return f"{user.get_username()} has no accounts to sync."
        listed = ", ".join(f"{a.pk} {a.name} ({a.get_status_display().lower()})" for a in others)
        return f"{user.get_username()} has no active accounts to sync: {listed}."


def _broker_uri() -> str:
    from caly.celery import app

    return app.connection_for_write().as_uri()  # the password is masked


def _queued_text(run: SyncRun) -> str:
    if run.trigger == SyncRun.Trigger.COMMAND:
        return "queued."
    return f"was already queued ({run.get_trigger_display().lower()}); following that one."


class Watcher:
    """Draws one progress bar per run, in place on a terminal, or a line per change otherwise."""

    def __init__(self, out, run_ids: list[int], *, interval: float, inline: bool = False):
        self.out = out
        self.queued_text = "starting in this process" if inline else "waiting for a worker"
        self.run_ids = run_ids
        self.interval = interval
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.drawn = 0
        self.last_lines: dict[int, str] = {}
        self.started = time.monotonic()
        self.hinted = False

    def runs(self) -> list[SyncRun]:
        by_id = SyncRun.objects.select_related("account").in_bulk(self.run_ids)
        return [by_id[pk] for pk in self.run_ids if pk in by_id]

    def draw(self) -> list[SyncRun]:
        runs = self.runs()
        lines = [(run.pk, progress_line(run, queued_text=self.queued_text)) for run in runs]
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F", ending="")
            for _, line in lines:
                self.out.write(f"\x1b[2K{line}")
            self.drawn = len(lines)
        else:
            for pk, line in lines:
                if self.last_lines.get(pk) != line:
                    self.out.write(line)
        self.last_lines = dict(lines)
        self.out.flush()
        return runs

    def until_finished(self) -> None:
        while True:
            runs = self.draw()
            if all(run.state in SyncRun.TERMINAL_STATES for run in runs):
                return
            waited = time.monotonic() - self.started
            all_queued = all(run.state == SyncRun.State.QUEUED for run in runs)
            if all_queued and not self.hinted and waited > QUEUED_HINT_SECONDS:
                self.hinted = True
                self.out.write(
                    f"Still queued after {QUEUED_HINT_SECONDS} s: is a worker running? "
                    "(`make up`, or `celery -A caly worker --pool threads`)"
                )
                self.drawn = 0
            time.sleep(self.interval)

    def run_inline(self, run_id: int) -> None:
        """Run the sync in a thread of this process while the main thread draws its progress."""
        failure: list[BaseException] = []

        def execute():
            try:
                services.sync_run_execute(run_id=run_id)
            except BaseException as exc:  # reported below, with the run's own error
                failure.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=execute, name=f"sync-{run_id}", daemon=True)
        thread.start()
        while thread.is_alive():
            self.draw()
            thread.join(self.interval)
        self.draw()
        if failure:
            raise CommandError(
                f"Sync #{run_id} stopped with {type(failure[0]).__name__}: {failure[0]}"
            )

    def report(self) -> int:
        """One closing line per run; returns how many did not succeed."""
        failed = 0
        for run in self.runs():
            took = (
                f" in {(run.finished_at - run.started_at).total_seconds():.1f} s"
                if run.finished_at and run.started_at
                else ""
            )
            if run.state == SyncRun.State.SUCCEEDED:
                self.out.write(
                    f"Sync #{run.pk} of {run.account} succeeded{took}: {run.created} created, "
                    f"{run.updated} updated, {run.deleted} deleted."
                )
            else:
                failed += 1
                reason = run.error
                if run.state not in SyncRun.TERMINAL_STATES:
                    # A transient error in --inline mode: the run waits for a worker's retry.
                    later = f" at {run.retry_at:%H:%M:%S}" if run.retry_at else ""
                    reason = f"{reason + ' ' if reason else ''}(a worker retries it{later})"
                self.out.write(f"Sync #{run.pk} of {run.account} {run.state}{took}: {reason}")
        return failed


def progress_line(run: SyncRun, *, queued_text: str = "waiting for a worker") -> str:
    total, done = run.calendars_total, run.calendars_done
    fraction = done / total if total else 0.0
    if run.state == SyncRun.State.SUCCEEDED:
        fraction = 1.0
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    calendars = f"{done}/{total} calendars" if total else "discovering calendars"
    if run.state == SyncRun.State.QUEUED:
        calendars = queued_text
    return (
        f"#{run.pk} {run.account.name[:30]:<30} [{bar}] {calendars}, "
        f"{run.events_processed:,} events  {run.state}"
    )
