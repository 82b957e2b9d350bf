"""The projection runner: feeds events past a checkpoint to a consumer, in batches.

Each batch is one write transaction holding the consumer's output *and* its new checkpoint,
so a crash never applies an event twice or skips one. Because appends are serialized (see
``control_plane.db.engine``), reading ``seq > checkpoint`` never skips a late commit. Several
replicas may run the same consumer: the write lock serializes them and the checkpoint read
inside the transaction makes the second one see the first one's progress.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from control_plane.db.engine import Database
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.eventlog.checkpoints import get_checkpoint, set_checkpoint
from control_plane.eventlog.store import last_seq, read_after, read_after_typed
from shared.events import LogEvent, Payload

Handler = Callable[[UnitOfWork, Sequence[LogEvent[Payload]]], None]
"""A consumer's step: write its output for a batch of typed events (in seq order)."""

WINDOW_BATCHES = 10


def checkpoint_topic(name: str) -> str:
    """The wake-up topic published when ``name``'s checkpoint moves (a read waiting for the
    consumer to reach the log head listens on it, on every replica)."""
    return f"checkpoint:{name}"


@dataclass(frozen=True)
class Projection:
    """A named consumer: ``handle`` writes its output for a batch of events."""

    name: str
    handle: Handler
    types: frozenset[str] | None = None


def fold_in(uow: UnitOfWork, projection: Projection, batch: int = 1000) -> tuple[int, bool]:
    """Inside the caller's transaction, fold one batch past the checkpoint and move the
    checkpoint (past events of other types too, without reading them). Returns how many
    events the consumer got and whether more may remain."""
    types = sorted(projection.types) if projection.types is not None else None
    after = get_checkpoint(uow.conn, projection.name)
    head = last_seq(uow.conn)  # writers are serialized: nothing below head can still appear
    if head <= after:
        return 0, False
    # A bounded window keeps a typed read an index range scan however far the log runs
    # ahead (without it, "type IN (...) ORDER BY seq LIMIT n" may sort the whole tail).
    window_end = min(head, after + WINDOW_BATCHES * batch)
    events = read_after_typed(uow.conn, after, batch, types=types, before=window_end + 1)
    if events:
        projection.handle(uow, events)
    upto = events[-1].seq if len(events) == batch else window_end
    set_checkpoint(uow, projection.name, upto)
    uow.wake(checkpoint_topic(projection.name))
    return len(events), upto < head


def run_once(db: Database, projection: Projection, batch: int = 1000) -> int:
    """Fold one batch past the checkpoint in its own transaction; returns how many events
    were handed to the consumer."""
    with db.engine.connect() as conn:
        # a cheap look first: an idle consumer takes no write lock
        if not read_after(conn, get_checkpoint(conn, projection.name), 1):
            return 0
    with write_transaction(db) as uow:
        handled, _ = fold_in(uow, projection, batch)
        return handled


def run_until_caught_up(db: Database, projection: Projection, batch: int = 1000) -> int:
    total = 0
    while True:
        with db.engine.connect() as conn:
            if not read_after(conn, get_checkpoint(conn, projection.name), 1):
                return total
        with write_transaction(db) as uow:
            handled, more = fold_in(uow, projection, batch)
        total += handled
        if not more:
            return total
