"""One way to wait: poll a predicate with a short sleep until it holds.

The timeout is a guard that turns a hang into a clear failure; it never asserts how fast
something happens (a loaded 2-core machine is slower, not wrong). Where a test must tell a
wake-up from a fallback re-check, it picks a timeout below the re-check period and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
INTERVAL_S = 0.05


def wait_until(
    what: str,
    predicate: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    interval: float = INTERVAL_S,
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Fails with ``AssertionError`` naming ``what``, the timeout and the last value seen (and
    ``context()``, e.g. a process's log, when given) once ``timeout`` seconds have passed. An
    exception raised by ``predicate`` propagates at once: a predicate fails early that way
    (a process that exited will never become ready)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what}; last seen: {value!r}"
            if context is not None:
                message += "\n" + context()
            raise AssertionError(message)
        time.sleep(interval)
