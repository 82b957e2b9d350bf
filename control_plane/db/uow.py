"""The unit of work: the only place that opens write transactions and commits.

One command is one transaction::

    with write_transaction(db) as uow:
        ...  # load state, decide (pure code), append events, update projections
    # committed here; wake-ups are published only after the commit is durable

``uow.now_us`` is the control plane's clock for the whole command: the database's
``clock_timestamp()`` taken after the write lock on PostgreSQL (so replicas agree), the local
clock on SQLite (one process owns the file).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from control_plane.db.engine import WRITE_LOCK_KEY, Database

Publisher = Callable[[set[str]], None]

_PG_LOCK_AND_CLOCK = text(
    "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint "
    "FROM (SELECT pg_advisory_xact_lock(:key)) AS l"
)
_PG_CLOCK = text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
_PG_NOTIFY = text("SELECT pg_notify('krako', :topics)")

_clock_lock = threading.Lock()
_last_us = 0


def local_now_us() -> int:
    """Microseconds since the epoch, never going backwards within this process."""
    global _last_us
    now = time.time_ns() // 1000
    with _clock_lock:
        if now <= _last_us:
            now = _last_us + 1
        _last_us = now
    return now


@dataclass
class UnitOfWork:
    """An open write transaction, its clock, and the wake-up topics it will publish."""

    conn: Connection
    now_us: int
    is_postgres: bool
    wakeups: set[str] = field(default_factory=set)

    def wake(self, *topics: str) -> None:
        """Wake waiters on ``topics`` once this transaction has committed."""
        self.wakeups.update(topics)


class _Publishers:
    """Where committed wake-ups go (set by the app: the in-process notifier)."""

    def __init__(self) -> None:
        self.by_db: dict[int, Publisher] = {}


_publishers = _Publishers()


def set_publisher(db: Database, publisher: Publisher | None) -> None:
    if publisher is None:
        _publishers.by_db.pop(id(db), None)
    else:
        _publishers.by_db[id(db)] = publisher


@contextmanager
def write_transaction(db: Database) -> Iterator[UnitOfWork]:
    """Open the one write transaction of a command; commit on success, roll back on error."""
    if db.is_postgres:
        with db.engine.connect() as conn, conn.begin():
            now_us = int(conn.execute(_PG_LOCK_AND_CLOCK, {"key": WRITE_LOCK_KEY}).scalar_one())
            uow = UnitOfWork(conn, now_us, True)
            yield uow
            if uow.wakeups:
                # Delivered to listeners only when (and if) the transaction commits.
                conn.execute(_PG_NOTIFY, {"topics": " ".join(sorted(uow.wakeups))[:7900]})
        _publish(db, uow.wakeups)
        return
    with (
        db.sqlite_write_lock,
        db.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn,
        conn.begin(),
    ):
        uow = UnitOfWork(conn, local_now_us(), False)
        yield uow
    _publish(db, uow.wakeups)


def _publish(db: Database, topics: set[str]) -> None:
    if topics:
        publisher = _publishers.by_db.get(id(db))
        if publisher is not None:
            publisher(topics)


@contextmanager
def read_connection(db: Database) -> Iterator[Connection]:
    """A connection for reads (one consistent snapshot per statement; nothing is written)."""
    with db.engine.connect() as conn:
        yield conn
        conn.rollback()


def db_now_us(db: Database) -> int:
    """The control plane's clock outside a write transaction."""
    if db.is_postgres:
        with db.engine.connect() as conn:
            return int(conn.execute(_PG_CLOCK).scalar_one())
    return local_now_us()
