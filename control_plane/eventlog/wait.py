"""Waiting for something to happen: in-process wake-ups, and PostgreSQL LISTEN/NOTIFY across
processes (so a long-poll on one replica wakes when another replica places a unit).

A waiter registers *before* it checks the database and then awaits the topic, so a wake-up
between the check and the wait is never lost. Topics are short strings: ``events``,
``events:<tenant>``, ``node:<node_id>``, ``unit:<unit_id>``, ``queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator

log = logging.getLogger("krako.wait")


class Notifier:
    """Topic wake-ups for asyncio waiters, publishable from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @contextlib.contextmanager
    def subscribe(self, *topics: str) -> Iterator[asyncio.Future[None]]:
        """Register interest in ``topics``; the yielded future completes on the first wake."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        for t in topics:
            self._waiters[t].add(fut)
        try:
            yield fut
        finally:
            for t in topics:
                waiters = self._waiters.get(t)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[t]

    def _wake(self, topics: set[str]) -> None:
        if "*" in topics:
            topics = set(self._waiters)
        for t in topics:
            for fut in list(self._waiters.get(t, ())):
                if not fut.done():
                    fut.set_result(None)

    def publish(self, topics: set[str]) -> None:
        """Wake waiters; safe to call from worker threads."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(topics)
        else:
            loop.call_soon_threadsafe(self._wake, set(topics))

    def waiter_count(self) -> int:
        return sum(len(v) for v in self._waiters.values())


async def wait_for(fut: asyncio.Future[None], timeout: float) -> bool:
    """Await a subscription future; True if woken, False on timeout."""
    if timeout <= 0:
        return fut.done()
    try:
        await asyncio.wait_for(asyncio.shield(fut), timeout)
        return True
    except TimeoutError:
        return False


class PgListener:
    """A thread that LISTENs on channel ``krako`` and republishes topics locally."""

    def __init__(self, conninfo: str, notifier: Notifier) -> None:
        self._conninfo = conninfo
        self._notifier = notifier
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="krako-pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute("LISTEN krako")
                    # A reconnect may have missed notifications: wake every waiter once.
                    self._notifier.publish({"*"})
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._notifier.publish(set(note.payload.split()))
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); retrying in 1s", exc)
                self._stop.wait(1.0)
