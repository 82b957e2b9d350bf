"""Background loops of a control-plane process: each is a named asyncio task that runs one
transaction per tick in a worker thread and survives errors (logged, retried next tick)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("krako.loops")


@dataclass
class Loop:
    name: str
    interval_s: float
    tick: Callable[[], object]


async def run_loop(loop: Loop, stop: asyncio.Event) -> None:
    failures = 0
    while not stop.is_set():
        try:
            await run_in_threadpool(loop.tick)
            failures = 0
        except Exception:
            failures += 1
            if failures <= 3 or failures % 100 == 0:
                log.exception("loop %s failed (%d in a row)", loop.name, failures)
        try:
            await asyncio.wait_for(stop.wait(), loop.interval_s)
        except TimeoutError:
            pass
