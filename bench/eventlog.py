"""Event-log throughput on SQLite and PostgreSQL, next to the raw database in the same run.

Prints, per backend: appends/s one event per transaction and in batches of 100 through the log
layer (unit of work + write lock + idempotent-by-id insert), the same shapes as plain INSERT
commits on the same engine settings (the baseline), their ratio, and read-after throughput.

    python bench/eventlog.py [--events 3000] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from control_plane.db.engine import Database, create_database
from control_plane.db.migrate import upgrade
from control_plane.db.uow import read_connection, write_transaction
from control_plane.eventlog import append, read_after
from shared.events import EventType, NewEvent, NodeDrained

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _event(i: int) -> NewEvent:
    return NewEvent(
        event_id=f"bench-{uuid.uuid4().hex}",
        type=EventType.NODE_DRAINED,
        stream_id=f"node-{i % 50}",
        payload=NodeDrained(node_id=f"node-{i % 50}"),
    )


def _raw_insert(db: Database, n: int, batch: int) -> float:
    sql = text(
        "INSERT INTO raw_bench (event_id, type, stream_id, payload, recorded_at_us) "
        "VALUES (:event_id, :type, :stream_id, :payload, :recorded_at_us)"
    )
    t0 = time.perf_counter()
    with db.engine.connect() as conn:
        for start in range(0, n, batch):
            with conn.begin():
                conn.execute(
                    sql,
                    [
                        {
                            "event_id": uuid.uuid4().hex,
                            "type": "node.drained",
                            "stream_id": f"node-{i % 50}",
                            "payload": '{"node_id":"node-1"}',
                            "recorded_at_us": i,
                        }
                        for i in range(start, min(n, start + batch))
                    ],
                )
    return n / (time.perf_counter() - t0)


def _log_append(db: Database, n: int, batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        with write_transaction(db) as uow:
            append(uow, [_event(i) for i in range(start, min(n, start + batch))])
    return n / (time.perf_counter() - t0)


def _read_after(db: Database) -> tuple[int, float]:
    t0 = time.perf_counter()
    total, after = 0, 0
    with read_connection(db) as conn:
        while True:
            page = read_after(conn, after, 1000)
            if not page:
                break
            total += len(page)
            after = page[-1].seq
    return total, total / (time.perf_counter() - t0)


def _setup_raw(db: Database) -> None:
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT" if not db.is_postgres else "BIGSERIAL PRIMARY KEY"
    with db.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE raw_bench (seq {serial}, event_id VARCHAR(200) UNIQUE NOT NULL, "
                "type VARCHAR(64) NOT NULL, stream_id VARCHAR(200) NOT NULL, "
                "payload TEXT NOT NULL, "
                "recorded_at_us BIGINT NOT NULL)"
            )
        )


def run_backend(name: str, url: str, n: int) -> None:
    db = create_database(url, pool_size=2)
    upgrade(db)
    _setup_raw(db)
    single_n = max(200, n // 5)
    raw_single = _raw_insert(db, single_n, 1)
    log_single = _log_append(db, single_n, 1)
    raw_batch = _raw_insert(db, n * 5, 100)
    log_batch = _log_append(db, n * 5, 100)
    count, read_rate = _read_after(db)
    db.dispose()
    print(f"\n== {name}")
    print(f"{'shape':<28}{'raw INSERT/s':>14}{'event log/s':>14}{'log/raw':>10}")
    print(
        f"{'1 event per commit':<28}{raw_single:>14,.0f}{log_single:>14,.0f}"
        f"{log_single / raw_single:>10.2f}"
    )
    print(
        f"{'100 events per commit':<28}{raw_batch:>14,.0f}{log_batch:>14,.0f}"
        f"{log_batch / raw_batch:>10.2f}"
    )
    print(f"read-after (pages of 1000): {read_rate:,.0f} events/s over {count:,} events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events per batch test / 5")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            run_backend(
                "SQLite (WAL, synchronous=FULL)", f"sqlite:///{Path(tmp) / 'b.db'}", args.events
            )
    if "postgresql" in backends:
        import psycopg

        name = f"krako_bench_{uuid.uuid4().hex[:8]}"
        try:
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except Exception as exc:
            print(f"\n== PostgreSQL skipped: {exc}")
            return
        try:
            run_backend(
                "PostgreSQL (advisory-lock serialized writers)",
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
                args.events,
            )
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
