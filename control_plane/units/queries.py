"""Work-unit reads (no writes): a unit, a page of units, a unit's events, the queue depth by
priority, and the row the commands load. ``read_*`` are the API's queries (each opens its own
read connection); the others run on the caller's connection."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select

from control_plane.db.engine import Database
from control_plane.db.tables import queue_depth, work_units
from control_plane.errors import NotFound
from control_plane.eventlog.store import read_stream
from control_plane.units.rows import WORK_UNIT_COLUMNS, to_work_unit
from shared.enums import Priority, WorkUnitKind, WorkUnitStatus
from shared.events import Event
from shared.wire import WorkUnit, WorkUnitEvents

_UNIT = select(work_units).where(work_units.c.id == bindparam("b_id"))


def load_unit(conn: Connection, unit_id: str) -> Row[Any] | None:
    """The unit's full row (every column), or ``None``."""
    return conn.execute(_UNIT, {"b_id": unit_id}).first()


def get_unit(conn: Connection, unit_id: str, tenant_id: str | None) -> WorkUnit:
    """The unit, or 404 when it does not exist or belongs to another tenant."""
    row = conn.execute(select(*WORK_UNIT_COLUMNS).where(work_units.c.id == unit_id)).first()
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound(f"work unit {unit_id} not found")
    return to_work_unit(row)


def list_units(
    conn: Connection,
    tenant_id: str | None,
    status: WorkUnitStatus | None,
    session_id: str | None,
    after_id: str | None,
    limit: int,
    kind: WorkUnitKind | None = None,
    priority: Priority | None = None,
) -> list[WorkUnit]:
    query = select(*WORK_UNIT_COLUMNS)
    if tenant_id is not None:
        query = query.where(work_units.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(work_units.c.status == status.value)
    if kind is not None:
        query = query.where(work_units.c.kind == kind.value)
    if priority is not None:
        query = query.where(work_units.c.priority == priority.level)
    if session_id is not None:
        query = query.where(work_units.c.execution_session_id == session_id)
    if after_id is not None:
        query = query.where(work_units.c.id > after_id)
    query = query.order_by(work_units.c.id).limit(limit)
    return [to_work_unit(r) for r in conn.execute(query)]


def unit_events(conn: Connection, unit_id: str, tenant_id: str | None) -> list[Event]:
    get_unit(conn, unit_id, tenant_id)
    return read_stream(conn, unit_id)


def depth_by_priority(conn: Connection) -> dict[str, int]:
    """``{"p0": n, …, "p9": n}`` of queued units."""
    out = {f"p{i}": 0 for i in range(10)}
    rows = conn.execute(
        select(queue_depth.c.priority, func.sum(queue_depth.c.queued)).group_by(
            queue_depth.c.priority
        )
    )
    for priority, total in rows:
        out[f"p{priority}"] = int(total or 0)
    return out


# --------------------------------------------------------------------------- API queries


def read_unit(db: Database, unit_id: str, tenant_id: str | None) -> WorkUnit:
    """The query behind ``GET /v1/workunits/{id}``: the unit as ``tenant_id`` (None: the
    admin) may see it, or 404."""
    with db.engine.connect() as conn:
        return get_unit(conn, unit_id, tenant_id)


def read_units(
    db: Database,
    tenant_id: str | None,
    status: WorkUnitStatus | None,
    session_id: str | None,
    after_id: str | None,
    limit: int,
    kind: WorkUnitKind | None = None,
    priority: Priority | None = None,
) -> list[WorkUnit]:
    """The query behind ``GET /v1/workunits``: ``list_units``."""
    with db.engine.connect() as conn:
        return list_units(conn, tenant_id, status, session_id, after_id, limit, kind, priority)


def read_unit_events(db: Database, unit_id: str, tenant_id: str | None) -> WorkUnitEvents:
    """The query behind ``GET /v1/workunits/{id}/events``: the unit's events in log order."""
    with db.engine.connect() as conn:
        return WorkUnitEvents(events=unit_events(conn, unit_id, tenant_id))
