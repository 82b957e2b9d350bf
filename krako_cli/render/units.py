"""Work units: their status colours, their fields, and one-line verdicts."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from krako_cli.render.text import compact, fields
from shared.enums import WorkUnitStatus
from shared.wire import WorkUnit

STATUS_STYLE = {
    WorkUnitStatus.QUEUED: "yellow",
    WorkUnitStatus.SCHEDULED: "cyan",
    WorkUnitStatus.CLAIMED: "blue",
    WorkUnitStatus.COMPLETED: "green",
    WorkUnitStatus.FAILED: "red",
    WorkUnitStatus.CANCELLED: "magenta",
}


def unit_fields(unit: WorkUnit) -> Table:
    """Every field of the unit, one per row."""
    return fields(
        [
            ("id", unit.id),
            ("status", Text(unit.status.value, style=STATUS_STYLE[unit.status])),
            ("kind", unit.kind.value),
            ("session", unit.execution_session_id),
            ("priority", unit.priority.value),
            ("region", unit.region or "(any)"),
            ("attempt", f"{unit.attempt} of {unit.max_attempts}"),
            ("node", unit.node_id or "-"),
            ("tenant", unit.tenant_id),
            ("created", unit.created_at.isoformat()),
            ("updated", unit.updated_at.isoformat()),
            ("payload", compact(unit.payload)),
            ("result", compact(unit.result) if unit.result is not None else "-"),
            ("error", compact(unit.error) if unit.error is not None else "-"),
        ]
    )


def where(unit: WorkUnit) -> str:
    """`` on <node>`` when the unit is placed or claimed, else nothing."""
    return f" on {unit.node_id}" if unit.node_id else ""


def verdict(text: str, unit: WorkUnit) -> Text:
    """``text`` in the colour of the unit's status."""
    return Text(text, style=STATUS_STYLE[unit.status])
