"""pgqueuer 1.x on PostgreSQL under the comparison workload.

Workers: ``pgqueuer_worker.py`` processes, each one asyncpg connection and pgqueuer's
``QueueManager.run`` with its default batch size (10) and no concurrency cap; the harness
enqueues through ``Queries.enqueue`` on one asyncpg connection (scalar arguments for one job a
call, lists for a batch). Completion is the job leaving the ``pgqueuer`` table: pgqueuer deletes
a finished job and writes its ``successful`` log row in one statement, which its workers issue
for a batch of finished jobs at a time (when the batch is full or every 100 ms).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from peers.common import (
    Figure,
    RunContext,
    Workload,
    create_pg_database,
    drain,
    drop_pg_database,
    one_at_a_time,
    round_trips,
    warm_up,
)
from peers.procs import Child, wait_until

WORKER = Path(__file__).with_name("pgqueuer_worker.py")
THROUGHPUT_BATCH = 10  # pgqueuer's default dequeue batch
LATENCY_BATCH = 1  # a finished job's status is written at once instead of on the 100 ms timer


def missing() -> str | None:
    import importlib.util

    for module in ("pgqueuer", "asyncpg"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class PgqRun:
    """A throwaway database with pgqueuer's schema, the harness's connections, and workers."""

    def __init__(self, ctx: RunContext, tag: str) -> None:
        import asyncpg
        import psycopg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.ctx = ctx
        self.tag = tag
        self.dbname = f"krako_bench_{ctx.run_id}_pgq_{tag}"
        self.url = create_pg_database(ctx.pg_url, self.dbname)
        self.loop = _new_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(self.url))
        self.queries = Queries(AsyncpgDriver(self.conn))
        self.loop.run_until_complete(self.queries.install())
        self.monitor = psycopg.connect(self.url, autocommit=True)
        self.workers: list[Child] = []
        self.submitted = 0
        self.watcher: Any = None
        self.watch_conn: Any = None

    def start_workers(self, count: int, batch_size: int, *, wait: bool = True) -> None:
        ready = self.ctx.workdir / f"pgq-{self.tag}-b{batch_size}-ready"
        ready.mkdir(exist_ok=True)
        for i in range(count):
            argv = [sys.executable, str(WORKER), self.url, str(ready / str(i)), str(batch_size)]
            self.workers.append(
                self.ctx.children.start(f"pgqueuer-{self.tag}-{i}", argv, env=self.ctx.env)
            )
        if wait:
            wait_until(
                lambda: len(list(ready.iterdir())) >= count,
                what="pgqueuer workers ready",
                timeout=60,
                watch=self.workers,
            )

    def stop_workers(self) -> None:
        self.ctx.children.stop(self.workers, timeout=20)
        self.workers = []

    def enqueue_one(self, _i: int = 0) -> int:
        ids = self.loop.run_until_complete(self.queries.enqueue("noop", None))
        self.submitted += 1
        return int(ids[0])

    def enqueue_many(self, n: int) -> None:
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            coro = self.queries.enqueue(["noop"] * k, [None] * k, [0] * k)
            self.loop.run_until_complete(coro)
            self.submitted += k

    def completions(self) -> Callable[[], int]:
        """Jobs enqueued so far minus jobs still in the queue table (read in that order, so a
        job enqueued in between is never counted as done before it is)."""

        def count() -> int:
            time.sleep(0.01)
            submitted = self.submitted
            row = self.monitor.execute("SELECT count(*) FROM pgqueuer").fetchone()
            assert row is not None
            return submitted - int(row[0])

        return count

    def round_trip(self) -> None:
        """Enqueue one job and wait for pgqueuer's ``CompletionWatcher`` (LISTEN/NOTIFY on the
        queue table, then a status query) to report it terminal."""
        if self.watcher is None:
            import asyncpg
            from pgqueuer.core.completion import CompletionWatcher
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            self.watch_conn = self.loop.run_until_complete(asyncpg.connect(self.url))
            driver = AsyncpgDriver(self.watch_conn)
            self.watcher = CompletionWatcher(
                driver, queries=Queries(driver), debounce=timedelta(milliseconds=1)
            )
            self.loop.run_until_complete(self.watcher.__aenter__())

        async def once() -> str:
            (job_id,) = await self.queries.enqueue("noop", None)
            self.submitted += 1
            return str(await asyncio.wait_for(self.watcher.wait_for(job_id), 10))

        status = self.loop.run_until_complete(once())
        if status != "successful":
            raise RuntimeError(f"pgqueuer round trip: job ended {status}")

    def close(self) -> None:
        self.stop_workers()
        try:
            if self.watcher is not None:
                self.loop.run_until_complete(self.watcher.__aexit__(None, None, None))
                self.loop.run_until_complete(self.watch_conn.close())
            self.loop.run_until_complete(self.conn.close())
            self.monitor.close()
            self.loop.close()
        finally:
            drop_pg_database(self.ctx.pg_url, self.dbname)


def run(ctx: RunContext, wl: Workload) -> dict[str, Figure]:
    label = "pgqueuer/postgresql"
    figures: dict[str, Figure] = {}
    live = PgqRun(ctx, "e2e")
    try:
        live.start_workers(wl.workers, THROUGHPUT_BATCH)
        ctx.progress.note(f"{label}: end to end, {wl.units} jobs one enqueue at a time")
        count = warm_up(live.enqueue_one, live.completions(), wl.warmup, what=label)
        figures["e2e"] = one_at_a_time(
            live.enqueue_one,
            count,
            units=wl.units,
            time_limit=wl.time_limit,
            label=f"{label} e2e",
            progress=ctx.progress,
        )
        sent = figures["e2e"]["submitted"]
        wait_until(lambda: count() >= sent, what="the pgqueuer backlog", timeout=120)
        method = (
            "Queries.enqueue, then CompletionWatcher.wait_for (LISTEN/NOTIFY, 1 ms debounce); "
            "workers with batch_size={}"
        )
        ctx.progress.note(f"{label}: round trip x {wl.round_trips} (batch {THROUGHPUT_BATCH})")
        figures["round_trip_throughput_workers"] = round_trips(
            live.round_trip,
            samples=wl.round_trips,
            warmup=wl.warmup,
            label=f"{label} round trip",
            progress=ctx.progress,
            method=method.format(THROUGHPUT_BATCH),
        )
        live.stop_workers()
        live.start_workers(wl.workers, LATENCY_BATCH)
        ctx.progress.note(f"{label}: round trip x {wl.round_trips} (batch {LATENCY_BATCH})")
        figures["round_trip"] = round_trips(
            live.round_trip,
            samples=wl.round_trips,
            warmup=wl.warmup,
            label=f"{label} round trip",
            progress=ctx.progress,
            method=method.format(LATENCY_BATCH),
        )
    finally:
        live.close()

    backlog = PgqRun(ctx, "drain")
    try:
        figures["drain"] = drain(
            lambda: backlog.enqueue_many(wl.units),
            lambda: backlog.start_workers(wl.workers, THROUGHPUT_BATCH, wait=False),
            backlog.completions(),
            units=wl.units,
            time_limit=wl.time_limit,
            label=f"{label} drain",
            progress=ctx.progress,
        )
    finally:
        backlog.close()
    return figures
