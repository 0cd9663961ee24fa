"""Helpers shared by the benchmarks: Django set-up, figures out, timing."""

from __future__ import annotations

import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django() -> None:
    import django

    django.setup()


def report(name: str, figures: dict) -> None:
    """Print the figures and keep them in bench/out/<name>.json."""
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")
    (ROOT / "bench" / "out" / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))


@contextmanager
def timed(results: list[float]):
    start = time.perf_counter()
    yield
    results.append(time.perf_counter() - start)


def median(values: list[float]) -> float:
    return statistics.median(values)
