"""Exponential backoff with jitter, and a sleep that a stop event cuts short."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, with "equal jitter".

    Each delay is drawn uniformly from ``[d/2, d]`` so that agents that lost the control plane
    at the same moment do not come back in lockstep, while a delay never collapses to zero.
    A server's ``Retry-After`` is honoured when it asks for longer.
    """

    def __init__(self, initial: float, maximum: float, *, rng: random.Random | None = None):
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """The delay before the next try; counts one more failure."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        delay = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, self.maximum)
        return delay

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempts = 0


async def sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``event`` is set; True when the event was set."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
