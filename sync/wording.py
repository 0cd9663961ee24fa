"""How a sync run is worded for a person: the dashboard (as served and in its script, which
words it the same way) and the worker's line per run."""

from sync.models import SyncRun


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run_progress(run: SyncRun) -> str:
    """Where a run is: waiting, connecting, calendars done, events read from the server."""
    if run.state == SyncRun.State.QUEUED:
        return "waiting for a worker"
    if run.state == SyncRun.State.RUNNING:
        if not run.calendars_total:
            return "connecting…"
        return (
            f"{run.calendars_done}/{run.calendars_total} calendars · "
            f"{count(run.events_processed, 'event')} read"
        )
    if not run.events_processed:
        return "nothing new to read"
    return f"{count(run.events_processed, 'event')} read"


def run_changes(run: SyncRun) -> str:
    """What a finished run changed in Caly's copy: "no change", "3 events created, 1 deleted"."""
    done = [
        (n, verb)
        for n, verb in (
            (run.created, "created"),
            (run.updated, "updated"),
            (run.deleted, "deleted"),
        )
        if n
    ]
    if not done:
        return "no change"
    (first, verb), rest = done[0], done[1:]
    return ", ".join([f"{count(first, 'event')} {verb}", *(f"{n} {v}" for n, v in rest)])


def run_took(run: SyncRun) -> str:
    """How long a finished run took: "0.3 s", "4 min"."""
    if not (run.started_at and run.finished_at):
        return ""
    seconds = max(0.0, (run.finished_at - run.started_at).total_seconds())
    return f"{seconds:.1f} s" if seconds < 60 else f"{round(seconds / 60)} min"
