"""Consumer checkpoints, written in the same transaction as the consumer's output."""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from control_plane.db.tables import checkpoints
from control_plane.db.uow import UnitOfWork


def get_checkpoint(conn: Connection, name: str) -> int:
    value = conn.execute(select(checkpoints.c.last_seq).where(checkpoints.c.name == name)).scalar()
    return int(value or 0)


def set_checkpoint(uow: UnitOfWork, name: str, last_seq: int) -> None:
    """Move ``name``'s checkpoint to ``last_seq`` inside the caller's transaction."""
    result = uow.conn.execute(
        update(checkpoints)
        .where(checkpoints.c.name == name)
        .values(last_seq=last_seq, updated_at_us=uow.now_us)
    )
    if result.rowcount == 0:
        uow.conn.execute(
            checkpoints.insert().values(name=name, last_seq=last_seq, updated_at_us=uow.now_us)
        )
