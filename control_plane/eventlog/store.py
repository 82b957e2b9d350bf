"""Appending to and reading from the ``events`` table (rows become events in
``control_plane.eventlog.codec``, the only place that does it).

Appends run inside a unit of work (one transaction, serialized with every other writer, see
``control_plane.db.engine``), so the ``seq`` order is the commit order. Reads come in two forms:
``read_after`` / ``read_stream`` give the wire ``Event`` (what the API returns, the payload a
JSON object), ``read_after_typed`` / ``read_stream_typed`` the typed ``LogEvent`` (the payload
validated into its model) that the control plane's own readers take.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Select, func, insert, select

from control_plane.db.tables import events
from control_plane.db.uow import UnitOfWork
from control_plane.eventlog.codec import (
    dt_to_us,
    log_event,
    row_values,
    stored_event,
    us_to_dt,
    wire_event,
)
from shared.events import Event, LogEvent, NewEvent, Payload

__all__ = [
    "append",
    "append_idempotent",
    "count_between",
    "dt_to_us",
    "last_seq",
    "read_after",
    "read_after_typed",
    "read_stream",
    "read_stream_typed",
    "us_to_dt",
]

_INSERT_RETURNING = insert(events).returning(events.c.seq, sort_by_parameter_order=True)


def append(uow: UnitOfWork, new_events: Sequence[NewEvent]) -> list[LogEvent[Payload]]:
    """Append events whose ids are new (commands derive ids that are unique by construction);
    returns them as stored, with their seqs and their own payload models.

    A repeated ``event_id`` violates the unique constraint and aborts the transaction: the
    database, not Python, guarantees an event is never stored twice. Use ``append_idempotent``
    when a repeat is expected and should return the stored event.
    """
    if not new_events:
        return []
    rows = [row_values(e, uow.now_us) for e in new_events]
    if len(rows) == 1:
        seqs = [uow.conn.execute(_INSERT_RETURNING, rows[0]).scalar_one()]
    else:
        seqs = list(uow.conn.execute(_INSERT_RETURNING, rows).scalars())
    recorded_at = us_to_dt(uow.now_us)
    stored = [
        stored_event(e, int(seq), recorded_at) for seq, e in zip(seqs, new_events, strict=True)
    ]
    uow.wake("events")
    for tenant in {e.tenant_id for e in new_events if e.tenant_id}:
        uow.wake(f"events:{tenant}")
    return stored


def append_idempotent(uow: UnitOfWork, new_events: Sequence[NewEvent]) -> list[LogEvent[Payload]]:
    """Append; an event whose ``event_id`` is already stored is not appended again, and the
    stored event is returned in its place (order preserved)."""
    if not new_events:
        return []
    ids = [e.event_id for e in new_events]
    existing = {
        row.event_id: log_event(row)
        for row in uow.conn.execute(select(events).where(events.c.event_id.in_(ids)))
    }
    fresh: list[NewEvent] = []
    seen: set[str] = set()
    for e in new_events:
        if e.event_id not in existing and e.event_id not in seen:
            fresh.append(e)
            seen.add(e.event_id)
    stored = {e.event_id: e for e in append(uow, fresh)}
    stored.update(existing)
    return [stored[i] for i in ids]


def _after(
    after: int,
    limit: int,
    types: Iterable[str] | None,
    tenant_id: str | None,
    stream_id: str | None,
    before: int | None,
) -> Select[Any]:
    query = select(events).where(events.c.seq > after)
    if before is not None:
        query = query.where(events.c.seq < before)
    if types is not None:
        type_list = list(types)
        query = query.where(events.c.type.in_(type_list))
    if tenant_id is not None:
        query = query.where(events.c.tenant_id == tenant_id)
    if stream_id is not None:
        query = query.where(events.c.stream_id == stream_id)
    return query.order_by(events.c.seq).limit(limit)


def read_after(
    conn: Connection,
    after: int,
    limit: int = 1000,
    *,
    types: Iterable[str] | None = None,
    tenant_id: str | None = None,
    stream_id: str | None = None,
    before: int | None = None,
) -> list[Event]:
    """Events with ``after < seq`` (and ``seq < before`` when given) in seq order, filtered, in
    their wire form."""
    query = _after(after, limit, types, tenant_id, stream_id, before)
    return [wire_event(row) for row in conn.execute(query)]


def read_after_typed(
    conn: Connection,
    after: int,
    limit: int = 1000,
    *,
    types: Iterable[str] | None = None,
    tenant_id: str | None = None,
    stream_id: str | None = None,
    before: int | None = None,
) -> list[LogEvent[Payload]]:
    """``read_after``, each event typed (its payload validated into its model)."""
    query = _after(after, limit, types, tenant_id, stream_id, before)
    return [log_event(row) for row in conn.execute(query)]


def _stream(stream_id: str) -> Select[Any]:
    return select(events).where(events.c.stream_id == stream_id).order_by(events.c.seq)


def read_stream(conn: Connection, stream_id: str) -> list[Event]:
    """Every event of one stream (a unit or a node), in log order, in their wire form."""
    return [wire_event(row) for row in conn.execute(_stream(stream_id))]


def read_stream_typed(conn: Connection, stream_id: str) -> list[LogEvent[Payload]]:
    """``read_stream``, each event typed."""
    return [log_event(row) for row in conn.execute(_stream(stream_id))]


def count_between(conn: Connection, after: int, upto: int) -> int:
    """How many events have ``after < seq <= upto``."""
    query = select(func.count()).where(events.c.seq > after, events.c.seq <= upto)
    return int(conn.execute(query).scalar_one())


def last_seq(conn: Connection) -> int:
    value = conn.execute(select(func.max(events.c.seq))).scalar()
    return int(value or 0)
