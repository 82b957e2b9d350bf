"""The control plane's clock, passed in (never read from a global), so tests can move time.

``SystemClock`` is the wall clock in microseconds, never going backwards within one clock
object. ``ManualClock`` only moves when told to (``advance``/``set``): the command-tier tests
use it to expire leases, refill rate limits and age autoscaler decisions without sleeping.

On PostgreSQL the write transaction's time is the database's ``clock_timestamp()`` (so replicas
agree) unless the ``Database`` was given an explicit clock; on SQLite it is this clock.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Microseconds since the epoch."""

    def now_us(self) -> int: ...


class SystemClock:
    """The wall clock, strictly increasing per instance (two reads never give the same µs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def now_us(self) -> int:
        now = time.time_ns() // 1000
        with self._lock:
            if now <= self._last:
                now = self._last + 1
            self._last = now
        return now


class ManualClock:
    """A clock that moves only when told to; each read still advances it by 1 µs so that
    consecutive transactions keep distinct, increasing times."""

    def __init__(self, start_us: int = 1_800_000_000_000_000) -> None:
        self._lock = threading.Lock()
        self._now = start_us

    def now_us(self) -> int:
        with self._lock:
            self._now += 1
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += int(seconds * 1_000_000)

    def set(self, now_us: int) -> None:
        with self._lock:
            self._now = max(self._now, now_us)
