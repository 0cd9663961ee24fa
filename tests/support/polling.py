"""Waiting for something another process does: poll with a deadline, never a bare sleep."""

from collections.abc import Callable
from typing import TypeVar

from caly import polling

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """`caly.polling.wait_for`, failing the test with an AssertionError."""
    return polling.wait_for(
        condition, timeout=timeout, interval=interval, what=what, error=AssertionError
    )
