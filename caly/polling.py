"""Waiting for something another process does: poll with a deadline, never a bare sleep."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
    error: type[Exception] = TimeoutError,
) -> T:
    """Call `condition` until it returns something true, and return that; `error` past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)
