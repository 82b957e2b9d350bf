"""One pgqueuer worker process of the benchmark: one asyncpg connection, one no-op
entrypoint, run the way pgqueuer's own CLI runs a worker (uvloop when installed).

    python pgqueuer_worker.py DSN READY_FILE BATCH_SIZE

SIGTERM or SIGINT sets pgqueuer's shutdown event: it stops dequeueing, finishes what it holds,
flushes its buffered status log and exits."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job


async def work(dsn: str, ready: Path, batch_size: int) -> None:
    connection = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pgq.shutdown.set)
    ready.touch()
    await pgq.qm.run(batch_size=batch_size)
    await connection.close()


def main() -> None:
    dsn, ready, batch_size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    try:
        import uvloop
    except ImportError:
        asyncio.run(work(dsn, ready, batch_size))
    else:
        uvloop.run(work(dsn, ready, batch_size))


if __name__ == "__main__":
    main()
