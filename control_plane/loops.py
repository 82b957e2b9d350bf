"""Background loops of a control-plane process: each is a named asyncio task that runs one
transaction per tick in a worker thread and survives errors (logged, retried next tick).

A loop with a ``Trigger`` also ticks as soon as the trigger fires (a billing read asks the
billing loop to fold now, rather than writing itself); a fire while a tick runs gives one more
tick right after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

log = logging.getLogger("krako.loops")


class Trigger:
    """Wakes a loop before its interval runs out. Fired from the event loop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class Loop:
    name: str
    interval_s: float
    tick: Callable[[], object]
    trigger: Trigger | None = None


async def _pause(loop: Loop, stop: asyncio.Event) -> None:
    """Until the interval runs out, ``stop`` is set or the loop's trigger fires."""
    waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
    if loop.trigger is not None:
        waits.append(asyncio.ensure_future(loop.trigger.wait()))
    try:
        await asyncio.wait(waits, timeout=loop.interval_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def run_loop(loop: Loop, stop: asyncio.Event) -> None:
    failures = 0
    while not stop.is_set():
        if loop.trigger is not None:
            loop.trigger.clear()  # a fire from now on asks for another tick
        try:
            await anyio.to_thread.run_sync(loop.tick)
            failures = 0
        except Exception:
            failures += 1
            if failures <= 3 or failures % 100 == 0:
                log.exception("loop %s failed (%d in a row)", loop.name, failures)
        await _pause(loop, stop)
