"""Read-side queries for the API (no writes)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from control_plane.db.tables import nodes, work_units
from control_plane.errors import NotFound
from control_plane.eventlog.store import read_stream
from control_plane.units.rows import WORK_UNIT_COLUMNS, load_node, to_node, to_work_unit
from shared.enums import Priority, WorkUnitKind, WorkUnitStatus
from shared.events import Event
from shared.wire import Node, WorkUnit


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


def get_node(conn: Connection, node_id: str) -> Node:
    row = load_node(conn, node_id)
    if row is None:
        raise NotFound(f"node {node_id} not found")
    return to_node(row)


def list_nodes(conn: Connection, after_id: str | None, limit: int) -> list[Node]:
    query = select(nodes)
    if after_id is not None:
        query = query.where(nodes.c.node_id > after_id)
    return [to_node(r) for r in conn.execute(query.order_by(nodes.c.node_id).limit(limit))]
