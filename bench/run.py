"""Run Caly's benchmarks: each bench/bench_*.py in its own process, on a database and queues of its own.

Usage: python bench/run.py [NAME ...]   (NAME is the part after bench_, e.g. `queue`)
Each benchmark prints its figures and writes them to bench/out/<name>.json.

Against another commit: CALY_BENCH_VS=<commit> runs each benchmark on a `git worktree` of that
commit ("before") and on this checkout ("after", or a worktree of CALY_BENCH_AFTER=<commit>),
alternately, CALY_BENCH_ROUNDS times (2 by default): before, after, before, after... Every run
has its own database and queues, and its processes the cwd and PYTHONPATH of their checkout;
the before side runs the benchmark scripts of its own commit (this checkout's where it has none).
It prints every figure of both sides, after/before pair by pair and their median, and keeps all
of it in bench/out/<name>_vs_<commit>.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
ADMIN_DSN = os.environ.get("CALY_BENCH_ADMIN_DSN", "dbname=postgres user=root host=127.0.0.1")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _admin(sql: str) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def _delete_queues(broker_url: str, prefix: str) -> None:
    """The run's own queues go with it (delay queues expire by themselves)."""
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for name in (f"{prefix}.sync", f"{prefix}.maintenance", f"{prefix}.webhooks"):
            channel.queue_delete(name)
            channel.exchange_delete(name)


def run_benchmarks(checkout: Path, names: list[str]) -> tuple[int, dict[str, dict]]:
    """Every selected benchmark of `checkout` on a new database and queue prefix.

    Returns the number of failures and each benchmark's figures (its bench/out/<name>.json).
    """
    scripts = sorted((checkout / "bench").glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    run_id = f"{int(time.time())}{os.getpid()}{secrets.token_hex(2)}"
    database = f"caly_bench_{run_id}"
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "DJANGO_SETTINGS_MODULE": "caly.settings",
        "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{database}",
        "CELERY_BROKER_URL": BROKER_URL,
        "CALY_QUEUE_PREFIX": f"caly-bench-{run_id}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "CALY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "CALY_ALLOW_PRIVATE_URLS": "1",
        "DJANGO_DEBUG": "0",
        "CALY_LOG_LEVEL": "WARNING",
    }
    (checkout / "bench" / "out").mkdir(exist_ok=True)
    _admin(f'CREATE DATABASE "{database}"')
    failed, results = 0, {}
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0", "--no-input"],
            cwd=checkout,
            env=env,
            check=True,
        )
        for script in scripts:
            name = script.stem.removeprefix("bench_")
            figures_path = checkout / "bench" / "out" / f"{name}.json"
            figures_path.unlink(missing_ok=True)
            print(f"\n=== {script.stem} ({checkout}) ===", flush=True)
            result = subprocess.run([sys.executable, str(script)], cwd=checkout, env=env)
            failed += result.returncode != 0
            if figures_path.exists():
                results[name] = json.loads(figures_path.read_text())
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _delete_queues(BROKER_URL, env["CALY_QUEUE_PREFIX"])
    return failed, results


def worktree(commit: str) -> Path:
    """A detached checkout of `commit` in a temporary directory, with this checkout's benchmark
    files where the commit has none."""
    path = Path(tempfile.mkdtemp(prefix="caly-bench-vs-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), commit], cwd=ROOT, check=True
    )
    for source in (ROOT / "bench").glob("*.py"):
        if not (path / "bench" / source.name).exists():
            print(f"  {commit} has no bench/{source.name}: using this checkout's", flush=True)
            shutil.copy(source, path / "bench" / source.name)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
    shutil.rmtree(path.parent, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def compare(name: str, before: list[dict], after: list[dict]) -> dict:
    """Per numeric figure: both sides' values, after/before of each pair and their median."""
    rows = {}
    for key in after[0] if after else []:
        pairs = [
            (b.get(key), a.get(key))
            for b, a in zip(before, after, strict=False)
            if isinstance(b.get(key), int | float) and isinstance(a.get(key), int | float)
        ]
        pairs = [(b, a) for b, a in pairs if not isinstance(a, bool)]
        if not pairs:
            continue
        ratios = [a / b if b else float("nan") for b, a in pairs]
        rows[key] = {
            "before": [b for b, _ in pairs],
            "after": [a for _, a in pairs],
            "after_over_before": ratios,
            "median_after_over_before": statistics.median(ratios),
        }
    print(f"\n=== {name}: after / before, pair by pair ===")
    width = max((len(k) for k in rows), default=10)
    for key, row in rows.items():
        before_s = " ".join(_shown(v) for v in row["before"])
        after_s = " ".join(_shown(v) for v in row["after"])
        ratios_s = " ".join(f"{r:.3f}" for r in row["after_over_before"])
        print(
            f"  {key:<{width}}  before {before_s:<22} after {after_s:<22}"
            f" ratio {ratios_s}  median {row['median_after_over_before']:.3f}"
        )
    return rows


def versus(commit: str, names: list[str]) -> int:
    rounds = int(os.environ.get("CALY_BENCH_ROUNDS", 2))
    after_commit = os.environ.get("CALY_BENCH_AFTER")
    before_tree = worktree(commit)
    after_tree = worktree(after_commit) if after_commit else ROOT
    failed = 0
    sides: dict[str, dict[str, list[dict]]] = {"before": {}, "after": {}}
    try:
        for n in range(rounds):
            for side, tree in (("before", before_tree), ("after", after_tree)):
                print(f"\n##### round {n + 1}/{rounds}: {side} ({tree}) #####", flush=True)
                bad, results = run_benchmarks(tree, names)
                failed += bad
                for name, figures in results.items():
                    sides[side].setdefault(name, []).append(figures)
    finally:
        remove_worktree(before_tree)
        if after_tree != ROOT:
            remove_worktree(after_tree)
    for name in sorted(set(sides["before"]) & set(sides["after"])):
        before, after = sides["before"][name], sides["after"][name]
        if len(before) != len(after):
            print(f"\n{name}: {len(before)} before and {len(after)} after runs; pairs in order")
        summary = {
            "before_commit": commit,
            "after_commit": after_commit or "this checkout",
            "rounds": rounds,
            "figures": compare(name, before, after),
            "before_runs": before,
            "after_runs": after,
        }
        label = commit.replace("/", "_")
        path = OUT / f"{name}_vs_{label}.json"
        path.write_text(json.dumps(summary, indent=2, default=str))
        print(f"  (all of it in {path.relative_to(ROOT)})")
    return 1 if failed else 0


def main(names: list[str]) -> int:
    OUT.mkdir(exist_ok=True)
    commit = os.environ.get("CALY_BENCH_VS")
    if commit:
        return versus(commit, names)
    failed, _ = run_benchmarks(ROOT, names)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
