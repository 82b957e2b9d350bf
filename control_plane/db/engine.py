"""Engine creation for both backends, the write serialization that orders the log, and the
``Database`` handle that owns everything the process keeps per database.

SQLite: WAL mode, ``synchronous=FULL`` (a 2xx is never sent before the commit is durable),
write transactions start with ``BEGIN IMMEDIATE`` under a per-database lock, so writers queue
in Python instead of spinning on ``SQLITE_BUSY``.

PostgreSQL (psycopg 3): every write transaction first takes one transaction-level advisory
lock. Writers are therefore serialized, so ``seq`` values become visible in commit order and a
reader tailing ``seq > checkpoint`` can never skip a late commit (DESIGN.md's ordering hazard).
The same lock makes the read-decide-write of each command race-free across replicas.

A ``Database`` is passed in, never looked up: its group-commit state (``db.uow``), the
publisher its committed wake-ups go to (set by the app), its clock, the cached price table
and the wallet snapshot interval all live on it, so two databases in one process (tests,
tools) share nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool, QueuePool

from control_plane.clock import Clock, SystemClock

if TYPE_CHECKING:
    from control_plane.db.uow import Batch

WRITE_LOCK_KEY = 0x6B72616B6F  # "krako"
DEFAULT_SNAPSHOT_EVERY = 10_000
"""Events folded between two wallet snapshots when nobody says otherwise (the settings'
default, ``KRAKO_WALLET_SNAPSHOT_EVERY``)."""

Publisher = Callable[[set[str]], None]
"""Where committed wake-up topics go (the app's in-process notifier)."""


@dataclass(eq=False)
class GroupCommit:
    """The group-commit state of one database (``db.uow`` drives it): the batch open now, and
    how many commands are queued for it."""

    mutex: threading.Lock = field(default_factory=threading.Lock)
    count_lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0
    batch: Batch | None = None


class CacheSlot:
    """One value derived from the database and the key (a version read in the same
    transaction) it was derived under. The owner compares keys before trusting the value;
    the pair is replaced as a whole, so a reader never sees a key with another key's value."""

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple[tuple[Any, ...], object] | None = None

    def get(self, key: tuple[Any, ...]) -> object | None:
        entry = self._entry
        return entry[1] if entry is not None and entry[0] == key else None

    def put(self, key: tuple[Any, ...], value: object) -> None:
        self._entry = (key, value)


@dataclass(eq=False)
class Database:
    """An engine plus what the unit of work needs to know about its backend and its time.

    ``clock`` gives the unit of work's time, except on PostgreSQL when ``database_clock`` is
    set (the default there): then it is the server's ``clock_timestamp()``, read after the
    write lock, so replicas agree. A ``Database`` built with an explicit clock (tests) uses
    that clock on both backends.
    """

    engine: Engine
    is_postgres: bool
    url: str
    clock: Clock = field(default_factory=SystemClock)
    database_clock: bool = False
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    publisher: Publisher | None = None
    sqlite_write_lock: threading.Lock = field(default_factory=threading.Lock)
    group_commit: GroupCommit = field(default_factory=GroupCommit)
    price_table: CacheSlot = field(default_factory=CacheSlot)

    def __post_init__(self) -> None:
        if self.snapshot_every < 1:
            raise ValueError("the snapshot interval is at least 1 event")

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


def _handle(
    engine: Engine, url: str, is_postgres: bool, clock: Clock | None, snapshot_every: int
) -> Database:
    return Database(
        engine,
        is_postgres,
        url,
        clock=clock if clock is not None else SystemClock(),
        database_clock=is_postgres and clock is None,
        snapshot_every=snapshot_every,
    )


def create_database(
    url: str,
    pool_size: int = 10,
    *,
    clock: Clock | None = None,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
) -> Database:
    """Build the engine for ``url`` (``sqlite:///…`` or ``postgresql+psycopg://…``); nothing
    connects yet. ``clock``: the unit of work's time (see ``Database``)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=20,
        )
        _sqlite_connect_hooks(engine)
        return _handle(engine, url, False, clock, snapshot_every)
    if url.startswith("postgresql"):
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=20,
            pool_pre_ping=False,
            connect_args={"prepare_threshold": 5},
        )
        return _handle(engine, url, True, clock, snapshot_every)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def create_nullpool_database(url: str, *, clock: Clock | None = None) -> Database:
    """A database handle with no pooling (for one-off tools and tests)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=NullPool)
        _sqlite_connect_hooks(engine)
        return _handle(engine, url, False, clock, DEFAULT_SNAPSHOT_EVERY)
    engine = create_engine(url, poolclass=NullPool)
    return _handle(engine, url, True, clock, DEFAULT_SNAPSHOT_EVERY)
