"""Leader leases: one replica at a time runs a loop that must not run twice (the autoscaler).

A lease is a row of ``leases`` (``name``, ``holder``, ``expires_us``). Inside a write
transaction, ``acquire`` takes the lease when nobody holds it or the holder let it expire, and
renews it when the caller already holds it. Write transactions are serialized across replicas
(the advisory write lock on PostgreSQL, the file lock on SQLite) and the expiry is judged by
the transaction's clock (``uow.now_us``: the database's on PostgreSQL), so a conditional
update is enough: two replicas can never both see themselves as the holder of a live lease.

A holder that dies stops renewing; the lease passes to another replica once it expires. A
holder that stops cleanly calls ``release`` so the next replica takes over at its next tick.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from control_plane.db.engine import Database
from control_plane.db.tables import leases
from control_plane.db.uow import UnitOfWork, write_transaction

__all__ = ["acquire", "holder_of", "release"]


def acquire(uow: UnitOfWork, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the lease ``name`` for ``holder`` until ``now + ttl_s``; returns whether
    ``holder`` holds it now. Never takes a live lease from another holder."""
    expires = uow.now_us + int(ttl_s * 1_000_000)
    taken = uow.conn.execute(
        update(leases)
        .where(
            leases.c.name == name,
            (leases.c.holder == holder) | (leases.c.expires_us <= uow.now_us),
        )
        .values(holder=holder, expires_us=expires)
    )
    if taken.rowcount:
        return True
    ins = pg_insert(leases) if uow.is_postgres else sqlite_insert(leases)
    uow.conn.execute(
        ins.values(name=name, holder=holder, expires_us=expires).on_conflict_do_nothing(
            index_elements=["name"]
        )
    )
    # read back rather than trust rowcount: psycopg reports -1 for this INSERT
    held = holder_of(uow.conn, name)
    return held is not None and held[0] == holder


def release(db: Database, name: str, holder: str) -> bool:
    """Give the lease up if ``holder`` has it (a clean shutdown); returns whether it did."""
    with write_transaction(db) as uow:
        gone = uow.conn.execute(
            delete(leases).where(leases.c.name == name, leases.c.holder == holder)
        )
        return bool(gone.rowcount)


def holder_of(conn: Connection, name: str) -> tuple[str, int] | None:
    """``(holder, expires_us)`` of the lease, or None when nobody holds or held it."""
    row = conn.execute(
        select(leases.c.holder, leases.c.expires_us).where(leases.c.name == name)
    ).first()
    return None if row is None else (str(row.holder), int(row.expires_us))
