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
from control_plane.eventlog.store import read_after
from shared.events import Event

Handler = Callable[[UnitOfWork, Sequence[Event]], None]


@dataclass(frozen=True)
class Projection:
    """A named consumer: ``handle`` writes its output for a batch of events."""

    name: str
    handle: Handler
    types: frozenset[str] | None = None


def run_once(db: Database, projection: Projection, batch: int = 1000) -> int:
    """Fold one batch past the checkpoint; returns how many events were consumed."""
    with db.engine.connect() as conn:
        # a cheap look first: an idle consumer takes no write lock
        if not read_after(conn, get_checkpoint(conn, projection.name), 1):
            return 0
    with write_transaction(db) as uow:
        after = get_checkpoint(uow.conn, projection.name)
        events = read_after(uow.conn, after, batch)
        if not events:
            return 0
        wanted = (
            events
            if projection.types is None
            else [e for e in events if e.type in projection.types]
        )
        if wanted:
            projection.handle(uow, wanted)
        set_checkpoint(uow, projection.name, events[-1].seq)
        return len(events)


def run_until_caught_up(db: Database, projection: Projection, batch: int = 1000) -> int:
    total = 0
    while True:
        n = run_once(db, projection, batch)
        total += n
        if n < batch:
            return total
