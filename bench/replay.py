"""Billing at scale on SQLite and PostgreSQL: consumer catch-up, replay, snapshot replay, the
JSONL sink and wallet reads over a log of N billable events.

Per backend and per N, on a fresh database:

1. the log is filled fast through the event log's own ``append`` (batches of 1000 events per
   transaction): ``workunit.completed`` and ``llm.invocation.completed`` events (about half
   each) with the control plane's pricing stamps, across ``--tenants`` tenants; then
   ``ANALYZE`` (unless ``--no-analyze``);
2. **catch-up**: the billing consumer folds the whole log into ledger lines and wallets, with
   wallet snapshots every ``--snapshot-every`` events (events/s);
3. **replay**: ``POST /v1/billing/replay``'s command, from seq 0 (events/s), then from the
   latest snapshot (its own events/s counts only the events after the snapshot, so the figure
   to compare is the wall time);
4. **sink**: writing the ledger's canonical JSONL file from scratch (lines/s);
5. **wallet reads**: ``GET /v1/billing/wallets/{id}``'s read, ``ledger.wallet_of`` on a pooled
   connection, p50 and p99 in microseconds over ``--reads`` random tenants.

    python bench/replay.py                       # 100,000 and 1,000,000 events, both backends
    python bench/replay.py --events 100000 --backends sqlite
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from control_plane.billing import consumer, ledger, snapshots  # noqa: E402
from control_plane.billing.export import LedgerSink  # noqa: E402
from control_plane.billing.prices import cpu_pricing, ensure_billing, token_pricing  # noqa: E402
from control_plane.billing.replay import replay  # noqa: E402
from control_plane.db.engine import Database, create_database  # noqa: E402
from control_plane.db.migrate import upgrade  # noqa: E402
from control_plane.db.uow import write_transaction  # noqa: E402
from control_plane.eventlog import append, last_seq  # noqa: E402
from control_plane.eventlog.projection import run_once  # noqa: E402
from shared.events import (  # noqa: E402
    EventType,
    LlmInvocationCompleted,
    NewEvent,
    WorkUnitCompleted,
)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 1000


def log(msg: str) -> None:
    print(msg, flush=True)


def fill(db: Database, n: int, tenants: int, rng: random.Random) -> None:
    """Append ``n`` billable events in transactions of ``BATCH``, printing progress."""
    with write_transaction(db) as uow:  # appends nothing: the stamps of the events below
        cpu = cpu_pricing(uow)
        tok = token_pricing(uow, "stub")
    t0 = time.perf_counter()
    done = 0
    unit = 0
    while done < n:
        batch: list[NewEvent] = []
        while len(batch) < min(BATCH, n - done):
            unit += 1
            uid = f"wu_{unit:08d}"
            tenant = f"tn_{rng.randrange(tenants):05d}"
            session = f"s{unit % 97}"
            # an LLM unit: one invocation then its completion; a CPU unit: the completion
            if rng.random() < 0.5 and len(batch) + 2 <= min(BATCH, n - done):
                tin, tout = rng.randrange(2000), rng.randrange(1000)
                batch.append(
                    NewEvent(
                        event_id=f"{uid}/llm/c1",
                        type=EventType.LLM_INVOCATION_COMPLETED,
                        tenant_id=tenant,
                        stream_id=uid,
                        correlation_id=session,
                        payload=LlmInvocationCompleted(
                            invocation_id="c1",
                            node_id="n1",
                            attempt=1,
                            provider="stub",
                            model="stub",
                            tokens_in=tin,
                            tokens_out=tout,
                            total_tokens=tin + tout,
                            latency_ms=5,
                            estimated_cost_usd="0.000100",
                            pricing=tok,
                        ),
                    )
                )
            batch.append(
                NewEvent(
                    event_id=f"{uid}/completed",
                    type=EventType.WORKUNIT_COMPLETED,
                    tenant_id=tenant,
                    stream_id=uid,
                    correlation_id=session,
                    payload=WorkUnitCompleted(
                        node_id="n1", attempt=1, cpu_ms=rng.randrange(10_000), pricing=cpu
                    ),
                )
            )
        with write_transaction(db) as uow:
            append(uow, batch)
        done += len(batch)
        if done % 100_000 < BATCH or done == n:
            rate = done / (time.perf_counter() - t0)
            log(f"   appended {done:>9,} / {n:,} events ({rate:,.0f}/s)")


def timed(label: str, fn: Callable[[], object], count: int, unit: str = "events") -> float:
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    log(f"   {label:<34}{count / seconds:>12,.0f} {unit}/s  ({seconds:,.1f} s)")
    return seconds


def catch_up_with_progress(db: Database) -> None:
    """``consumer.catch_up``, one batch (transaction) at a time, printing progress."""
    folded = 0
    t0 = time.perf_counter()
    next_report = 100_000
    while True:
        n = run_once(db, consumer.BILLING_PROJECTION, BATCH)
        folded += n
        if folded >= next_report:
            log(f"      folded {folded:>9,} ({folded / (time.perf_counter() - t0):,.0f}/s)")
            next_report += 100_000
        if n < BATCH:
            return


def wallet_reads(db: Database, tenants: int, reads: int, rng: random.Random) -> list[float]:
    samples: list[float] = []
    for _ in range(reads):
        tenant = f"tn_{rng.randrange(tenants):05d}"
        t0 = time.perf_counter_ns()
        with db.engine.connect() as conn:
            ledger.wallet_of(conn, tenant)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def run(name: str, url: str, n: int, args: argparse.Namespace) -> None:
    log(f"\n== {name}: {n:,} events")
    rng = random.Random(n)
    db = create_database(url, pool_size=4, snapshot_every=args.snapshot_every)
    try:
        upgrade(db)
        with write_transaction(db) as uow:
            ensure_billing(uow, False, True, Decimal("0.00005"))
        fill(db, n, args.tenants, rng)
        if args.analyze:
            # statistics, as autovacuum (PostgreSQL) or PRAGMA optimize (SQLite) would leave
            # them: without them the consumer's typed read (seq > x AND type IN (...)) may be
            # planned on the type index plus a sort of every later event, per batch
            with db.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        with db.engine.connect() as conn:
            total = last_seq(conn)  # the billing seed events (prices, policy) included
        timed("consumer catch-up", lambda: catch_up_with_progress(db), total)
        with ledger.read_snapshot(db) as conn:
            lines = ledger.count_lines(conn)
            snaps = snapshots.snapshot_seqs(conn)
        log(f"   ledger: {lines:,} lines; snapshots kept at seqs {snaps}")
        report = replay(db)
        assert report.identical, report
        timed("replay from seq 0", lambda: replay(db), report.events_replayed)
        snap = replay(db, from_snapshot=True)
        assert snap.identical and snap.replay_digest == report.replay_digest, snap
        seconds = timed(
            "replay from latest snapshot",
            lambda: replay(db, from_snapshot=True),
            report.events_replayed,
        )
        log(
            f"   {'':<34}(started at seq {snap.from_snapshot_seq:,}: "
            f"{snap.events_replayed:,} events folded, {seconds:,.1f} s wall)"
        )
        with tempfile.TemporaryDirectory() as tmp:
            sink = LedgerSink(Path(tmp) / "ledger.jsonl")
            timed("JSONL sink, whole file", lambda: sink.sync(db), lines, "lines")
            size = sink.path.stat().st_size
            log(f"   {'':<34}({size / 1e6:,.0f} MB)")
        wallet_reads(db, args.tenants, 200, rng)  # warm the pool
        samples = sorted(wallet_reads(db, args.tenants, args.reads, rng))
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99) - 1]
        log(f"   wallet read (wallet_of)          p50 {p50:,.0f} µs   p99 {p99:,.0f} µs")
    finally:
        db.dispose()


@contextmanager
def pg_database() -> Iterator[str | None]:
    import psycopg

    name = f"krako_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        log(f"\n== PostgreSQL skipped: {exc}")
        yield None
        return
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", default="100000,1000000", help="comma-separated log sizes (events)"
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--snapshot-every", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="skip ANALYZE after filling the log (shows the planner without statistics)",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.events.split(",") if x]
    for n in sizes:
        if "sqlite" in args.backends.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                run("SQLite (WAL, synchronous=FULL)", f"sqlite:///{Path(tmp) / 'b.db'}", n, args)
        if "postgresql" in args.backends.split(","):
            with pg_database() as url:
                if url is not None:
                    run("PostgreSQL", url, n, args)


if __name__ == "__main__":
    main()
