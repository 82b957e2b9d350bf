"""Row -> wire: a ``work_units`` row as the API shows it, and the JSON encoding of its columns."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Row

from control_plane.db.tables import work_units
from control_plane.eventlog.store import us_to_dt
from shared.enums import Priority, WorkUnitKind, WorkUnitStatus
from shared.wire import WorkUnit

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
    """A JSON column's text."""
    return orjson.dumps(value).decode()


def to_work_unit(row: Row[Any]) -> WorkUnit:
    """The wire model of a row with ``WORK_UNIT_COLUMNS`` (our own data: not validated again)."""
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
