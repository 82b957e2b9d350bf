"""Row <-> wire conversions and the small named queries the commands share."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, select

from control_plane.db.tables import nodes, work_units
from control_plane.eventlog.store import us_to_dt
from shared.enums import NodeHealth, Priority, WorkUnitKind, WorkUnitStatus
from shared.wire import Node, WorkUnit

WORK_UNIT_COLUMNS = [
    work_units.c.id,
    work_units.c.tenant_id,
    work_units.c.kind,
    work_units.c.execution_session_id,
    work_units.c.priority,
    work_units.c.region,
    work_units.c.payload,
    work_units.c.status,
    work_units.c.attempt,
    work_units.c.max_attempts,
    work_units.c.node_id,
    work_units.c.result,
    work_units.c.error,
    work_units.c.created_at_us,
    work_units.c.updated_at_us,
]


def _json_or_none(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def to_work_unit(row: Row[Any]) -> WorkUnit:
    return WorkUnit.model_construct(
        id=row.id,
        tenant_id=row.tenant_id,
        kind=WorkUnitKind(row.kind),
        execution_session_id=row.execution_session_id,
        priority=Priority.from_level(row.priority),
        region=row.region,
        payload=orjson.loads(row.payload),
        status=WorkUnitStatus(row.status),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        node_id=row.node_id,
        result=_json_or_none(row.result),
        error=_json_or_none(row.error),
        created_at=us_to_dt(row.created_at_us),
        updated_at=us_to_dt(row.updated_at_us),
    )


_UNIT = select(work_units).where(work_units.c.id == bindparam("b_id"))
_NODE = select(nodes).where(nodes.c.node_id == bindparam("b_id"))


def load_unit(conn: Connection, unit_id: str) -> Row[Any] | None:
    return conn.execute(_UNIT, {"b_id": unit_id}).first()


def to_node(row: Row[Any]) -> Node:
    return Node.model_construct(
        node_id=row.node_id,
        region=row.region,
        supported_kinds=[WorkUnitKind(k) for k in row.supported_kinds.split(",") if k],
        max_concurrency=row.max_concurrency,
        running=row.running,
        health=NodeHealth(row.health),
        trust=round(float(row.trust), 6),
        drained=bool(row.drained),
        quarantined=bool(row.quarantined),
        labels=orjson.loads(row.labels or "{}"),
        last_heartbeat_at=(
            us_to_dt(row.last_heartbeat_us) if row.last_heartbeat_us is not None else None
        ),
    )


def load_node(conn: Connection, node_id: str) -> Row[Any] | None:
    return conn.execute(_NODE, {"b_id": node_id}).first()
