"""Appending to and reading from the ``events`` table.

Appends run inside a unit of work (one transaction, serialized with every other writer, see
``control_plane.db.engine``), so the ``seq`` order is the commit order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, insert, select

from control_plane.db.tables import events
from control_plane.db.uow import UnitOfWork
from shared.events import Event, NewEvent


def us_to_dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def dt_to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _payload_json(event: NewEvent) -> str:
    return event.payload.model_dump_json(by_alias=True)


def _row_values(event: NewEvent, now_us: int) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type.value,
        "tenant_id": event.tenant_id,
        "stream_id": event.stream_id,
        "payload": _payload_json(event),
        "recorded_at_us": now_us,
        "causation_id": event.causation_id,
        "correlation_id": event.correlation_id,
    }


_INSERT_RETURNING = insert(events).returning(events.c.seq, sort_by_parameter_order=True)


def append(uow: UnitOfWork, new_events: Sequence[NewEvent]) -> list[Event]:
    """Append events whose ids are new (commands derive ids that are unique by construction).

    A repeated ``event_id`` violates the unique constraint and aborts the transaction: the
    database, not Python, guarantees an event is never stored twice. Use ``append_idempotent``
    when a repeat is expected and should return the stored event.
    """
    if not new_events:
        return []
    rows = [_row_values(e, uow.now_us) for e in new_events]
    if len(rows) == 1:
        seqs = [uow.conn.execute(_INSERT_RETURNING, rows[0]).scalar_one()]
    else:
        seqs = list(uow.conn.execute(_INSERT_RETURNING, rows).scalars())
    stored = [
        Event.model_construct(
            seq=int(seq),
            event_id=r["event_id"],
            type=r["type"],
            tenant_id=r["tenant_id"],
            stream_id=r["stream_id"],
            payload=orjson.loads(r["payload"]),
            recorded_at=us_to_dt(uow.now_us),
            causation_id=r["causation_id"],
            correlation_id=r["correlation_id"],
        )
        for seq, r in zip(seqs, rows, strict=True)
    ]
    uow.wake("events")
    for tenant in {e.tenant_id for e in new_events if e.tenant_id}:
        uow.wake(f"events:{tenant}")
    return stored


def append_idempotent(uow: UnitOfWork, new_events: Sequence[NewEvent]) -> list[Event]:
    """Append; an event whose ``event_id`` is already stored is not appended again, and the
    stored event is returned in its place (order preserved)."""
    if not new_events:
        return []
    ids = [e.event_id for e in new_events]
    existing = {
        row.event_id: _to_event(row)
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


def _to_event(row: Row[Any]) -> Event:
    # rows come from our own log: no validation needed, only the shape
    return Event.model_construct(
        seq=int(row.seq),
        event_id=row.event_id,
        type=row.type,
        tenant_id=row.tenant_id,
        stream_id=row.stream_id,
        payload=orjson.loads(row.payload),
        recorded_at=us_to_dt(row.recorded_at_us),
        causation_id=row.causation_id,
        correlation_id=row.correlation_id,
    )


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
    """Events with ``after < seq`` (and ``seq < before`` when given) in seq order, filtered."""
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
    query = query.order_by(events.c.seq).limit(limit)
    return [_to_event(row) for row in conn.execute(query)]


def read_stream(conn: Connection, stream_id: str) -> list[Event]:
    """Every event of one stream (a unit or a node), in log order."""
    query = select(events).where(events.c.stream_id == stream_id).order_by(events.c.seq)
    return [_to_event(row) for row in conn.execute(query)]


def last_seq(conn: Connection) -> int:
    from sqlalchemy import func

    value = conn.execute(select(func.max(events.c.seq))).scalar()
    return int(value or 0)
