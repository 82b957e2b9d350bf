"""Engine creation for both backends, and the write serialization that orders the log.

SQLite: WAL mode, ``synchronous=FULL`` (a 2xx is never sent before the commit is durable),
write transactions start with ``BEGIN IMMEDIATE`` under a process-wide lock, so writers queue
in Python instead of spinning on ``SQLITE_BUSY``.

PostgreSQL (psycopg 3): every write transaction first takes one transaction-level advisory
lock. Writers are therefore serialized, so ``seq`` values become visible in commit order and a
reader tailing ``seq > checkpoint`` can never skip a late commit (DESIGN.md's ordering hazard).
The same lock makes the read-decide-write of each command race-free across replicas.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool, QueuePool

WRITE_LOCK_KEY = 0x6B72616B6F  # "krako"


@dataclass
class Database:
    """An engine plus what the unit of work needs to know about its backend."""

    engine: Engine
    is_postgres: bool
    url: str
    sqlite_write_lock: threading.Lock

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_connect_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module; we issue BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_database(url: str, pool_size: int = 10) -> Database:
    """Build the engine for ``url`` (``sqlite:///…`` or ``postgresql+psycopg://…``)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=20,
        )
        _sqlite_connect_hooks(engine)
        return Database(engine, False, url, threading.Lock())
    if url.startswith("postgresql"):
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=20,
            pool_pre_ping=False,
            connect_args={"prepare_threshold": 5},
        )
        return Database(engine, True, url, threading.Lock())
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def create_nullpool_database(url: str) -> Database:
    """A database handle with no pooling (for one-off tools and tests)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=NullPool)
        _sqlite_connect_hooks(engine)
        return Database(engine, False, url, threading.Lock())
    engine = create_engine(url, poolclass=NullPool)
    return Database(engine, True, url, threading.Lock())
