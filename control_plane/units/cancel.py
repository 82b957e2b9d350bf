"""Cancel a work unit (tenant or admin): withdraw it from whatever non-terminal state it is in."""

from __future__ import annotations

from control_plane.db.engine import Database
from control_plane.db.uow import write_transaction
from control_plane.errors import Conflict, NotFound
from control_plane.scheduling.scheduler import SchedulerContext, defer_placement
from control_plane.units import lifecycle
from control_plane.units.queries import load_unit
from control_plane.units.rows import to_work_unit
from shared.enums import WorkUnitStatus
from shared.wire import WorkUnit


def cancel(
    db: Database, ctx: SchedulerContext, unit_id: str, tenant_id: str | None, by: str
) -> WorkUnit:
    """Cancel a unit that is not terminal yet (409 ``already_terminal`` otherwise; 404 for a
    unit of another tenant). A slot it held goes to the next unit before the commit."""
    with write_transaction(db) as uow:
        row = load_unit(uow.conn, unit_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFound(f"work unit {unit_id} not found")
        status = WorkUnitStatus(row.status)
        if status.terminal:
            raise Conflict(
                f"work unit {unit_id} is already {status.value}", code="already_terminal"
            )
        lifecycle.cancel(uow, row, by)
        if status is not WorkUnitStatus.QUEUED:
            defer_placement(uow, ctx)
        fresh = load_unit(uow.conn, unit_id)
        assert fresh is not None
        return to_work_unit(fresh)
