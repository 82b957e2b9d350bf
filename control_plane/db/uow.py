"""The unit of work: the only place that opens write transactions and commits.

One command is one transaction::

    with write_transaction(db) as uow:
        ...  # load state, decide (pure code), append events, update projections
    # committed here; wake-ups are published only after the commit is durable

``uow.now_us`` is the control plane's clock for the whole command: the database's
``clock_timestamp()`` taken after the write lock on PostgreSQL (so replicas agree), the
``Database``'s own clock on SQLite (one process owns the file) and wherever the ``Database``
was built with an explicit clock (tests move time with a ``ManualClock``).

Everything here is per ``Database`` (its group-commit state, its publisher, its clock):
nothing is kept at module level.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, text

from control_plane.db.engine import WRITE_LOCK_KEY, Database, GroupCommit, Publisher

__all__ = [
    "Deferred",
    "Publisher",
    "UnitOfWork",
    "db_now_us",
    "read_connection",
    "write_transaction",
]

_PG_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_PG_LOCK_AND_CLOCK = text(
    "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint "
    "FROM (SELECT pg_advisory_xact_lock(:key)) AS l"
)
_PG_CLOCK = text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
_PG_NOTIFY = text("SELECT pg_notify('krako', :topics)")

Deferred = Callable[["UnitOfWork"], None]


@dataclass
class UnitOfWork:
    """An open write transaction, its clock, and the wake-up topics it will publish."""

    conn: Connection
    now_us: int
    is_postgres: bool
    db: Database
    """The database the transaction runs on (its caches and billing settings)."""
    wakeups: set[str] = field(default_factory=set)
    deferred: dict[str, Deferred] = field(default_factory=dict)

    def wake(self, *topics: str) -> None:
        """Wake waiters on ``topics`` once this transaction has committed."""
        self.wakeups.update(topics)

    def defer(self, key: str, fn: Deferred) -> None:
        """Run ``fn`` once, just before the commit, however many commands of the batch asked
        for ``key`` (placement after completions, for example)."""
        self.deferred.setdefault(key, fn)


# --------------------------------------------------------------------------- group commit

MAX_BATCH = 256
log = logging.getLogger("krako.uow")


@dataclass
class Batch:
    """One database transaction shared by the commands that queued for it."""

    conn: Connection
    outer: Any
    now_us: int
    members: int = 0
    wakeups: set[str] = field(default_factory=set)
    deferred: dict[str, Deferred] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


# Group commit (the state lives on ``Database.group_commit``). Commands run one at a time,
# each in its own SAVEPOINT of a shared transaction; the command that finds nobody queued
# behind it commits the batch, and every member returns only after that commit (so no reply
# is sent before its data is durable). A failing command rolls back its savepoint only. Under
# load, one commit (and one fsync) serves many commands; alone, a command commits at once.


def _open_batch(db: Database) -> Batch:
    if db.is_postgres:
        conn = db.engine.connect()
        outer = conn.begin()
        try:
            if db.database_clock:
                now_us = int(conn.execute(_PG_LOCK_AND_CLOCK, {"key": WRITE_LOCK_KEY}).scalar_one())
            else:
                conn.execute(_PG_LOCK, {"key": WRITE_LOCK_KEY})
                now_us = db.clock.now_us()  # read after the lock, as the server's would be
        except BaseException:
            outer.rollback()
            conn.close()
            raise
        return Batch(conn, outer, now_us)
    db.sqlite_write_lock.acquire()
    try:
        conn = db.engine.connect().execution_options(sqlite_begin="IMMEDIATE")
        outer = conn.begin()
    except BaseException:
        db.sqlite_write_lock.release()
        raise
    return Batch(conn, outer, db.clock.now_us())


def _run_deferred(db: Database, batch: Batch) -> None:
    """Run (and forget) the deferred steps the batch's members asked for so far."""
    steps, batch.deferred = batch.deferred, {}
    for key, fn in steps.items():
        uow = UnitOfWork(batch.conn, batch.now_us, db.is_postgres, db)
        sp = batch.conn.begin_nested()
        try:
            fn(uow)
            sp.commit()
            batch.wakeups |= uow.wakeups
        except Exception:
            sp.rollback()
            log.exception("deferred step %s failed; the batch commits without it", key)


def _finish_batch(db: Database, batch: Batch) -> None:
    """Run the deferred steps, commit (or roll back an empty batch) and close."""
    try:
        if batch.members:
            _run_deferred(db, batch)
            if db.is_postgres and batch.wakeups:
                # Delivered to listeners only when (and if) the transaction commits.
                topics = " ".join(sorted(batch.wakeups))
                # NOTIFY payloads are capped at 8000 bytes: past that, wake every waiter
                batch.conn.execute(_PG_NOTIFY, {"topics": topics if len(topics) < 7900 else "*"})
            batch.outer.commit()
        else:
            batch.outer.rollback()
    except BaseException as exc:
        batch.error = exc
        try:
            batch.outer.rollback()
        except Exception:
            pass
    finally:
        batch.conn.close()
        if not db.is_postgres:
            db.sqlite_write_lock.release()


class write_transaction:
    """Open the one write transaction of a command; commit on success, roll back on error.

    ``with write_transaction(db) as uow: ...`` — on leaving the block the command's work is
    committed and durable (possibly together with other commands: group commit), or, if the
    block raised, undone while the others' work stands.

    ``settled=True``: the command must see the state the earlier members of its batch would
    have committed, deferred steps included (the autoscaler reading slots must not see a
    completion whose follow-up placement has not run yet), so those steps run first.
    """

    def __init__(self, db: Database, *, settled: bool = False) -> None:
        self.db = db
        self.settled = settled
        self.b: GroupCommit = db.group_commit
        self.batch: Batch | None = None
        self.sp: Any = None
        self.uow: UnitOfWork | None = None

    def __enter__(self) -> UnitOfWork:
        b = self.b
        with b.count_lock:
            b.waiting += 1
        b.mutex.acquire()
        with b.count_lock:
            b.waiting -= 1
        try:
            if b.batch is None:
                b.batch = _open_batch(self.db)
            self.batch = b.batch
            if self.settled and self.batch.deferred:
                _run_deferred(self.db, self.batch)
            # The first command of a batch needs no savepoint: if it fails, the whole
            # (otherwise empty) transaction is rolled back. Later ones each get one.
            self.sp = self.batch.conn.begin_nested() if self.batch.members else None
        except BaseException:
            self._commit_batch()  # whatever earlier members did still commits
            raise
        self.uow = UnitOfWork(self.batch.conn, self.batch.now_us, self.db.is_postgres, self.db)
        return self.uow

    def _commit_batch(self) -> None:
        """Finish the open batch (if any) and release the mutex; publish on success."""
        b = self.b
        batch = b.batch
        b.batch = None
        try:
            if batch is not None:
                _finish_batch(self.db, batch)
        finally:
            b.mutex.release()
            if batch is not None:
                batch.done.set()
        if batch is not None and batch.error is None and batch.members:
            _publish(self.db, batch.wakeups)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        b, batch, uow = self.b, self.batch, self.uow
        assert batch is not None and uow is not None
        own_error: BaseException | None = None
        if exc is None:
            try:
                if self.sp is not None:
                    self.sp.commit()
                batch.members += 1
                batch.wakeups |= uow.wakeups
                for key, fn in uow.deferred.items():
                    batch.deferred.setdefault(key, fn)
            except BaseException as err:  # the savepoint could not be released
                own_error = err
                self._rollback_savepoint()
        else:
            self._rollback_savepoint()
        with b.count_lock:
            others = b.waiting
        failed_first = self.sp is None and (exc is not None or own_error is not None)
        if failed_first or others == 0 or batch.members >= MAX_BATCH:
            self._commit_batch()  # a failed first command: members == 0, so a rollback
        else:
            b.mutex.release()
            if exc is None and own_error is None:
                batch.done.wait()
        if exc is not None:
            return False  # the command's own exception propagates; its work is undone
        if own_error is not None:
            raise own_error
        if batch.error is not None:
            raise batch.error
        return False

    def _rollback_savepoint(self) -> None:
        if self.sp is None:
            return  # the first command: the batch rolls back as a whole
        try:
            self.sp.rollback()
        except Exception:
            log.exception("savepoint rollback failed")


def _publish(db: Database, topics: set[str]) -> None:
    if topics:
        publisher = db.publisher
        if publisher is not None:
            publisher(topics)


@contextmanager
def read_connection(db: Database) -> Iterator[Connection]:
    """A connection for reads (one consistent snapshot per statement; nothing is written)."""
    with db.engine.connect() as conn:
        yield conn
        conn.rollback()


def db_now_us(db: Database) -> int:
    """The control plane's clock outside a write transaction (the same source as
    ``uow.now_us``)."""
    if db.database_clock:
        with db.engine.connect() as conn:
            return int(conn.execute(_PG_CLOCK).scalar_one())
    return db.clock.now_us()
