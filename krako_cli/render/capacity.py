"""Capacity: the admission mode in force, the fleet, the queue and the last decision."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from krako_cli.render.text import compact, fields
from shared.enums import CapacityMode
from shared.wire import CapacityReport

MODE_STYLE = {
    CapacityMode.OPEN: "green",
    CapacityMode.THROTTLED: "yellow",
    CapacityMode.CRITICAL: "bold red",
}


def queue_text(report: CapacityReport) -> str:
    """The queue depth of each priority that has queued units (``p1 4, p2 1``), or ``empty``."""
    return ", ".join(f"{p} {n}" for p, n in report.queue_depth.items() if n) or "empty"


def capacity_fields(report: CapacityReport) -> Table:
    """The capacity report, one field per row."""
    last = compact(report.last_decision, 300) if report.last_decision else "-"
    return fields(
        [
            ("mode", Text(report.mode.value, style=MODE_STYLE[report.mode])),
            ("nodes", f"{report.healthy_nodes} healthy, {report.desired_nodes} desired"),
            ("running", str(report.running)),
            ("utilization", f"{report.utilization:.0%}"),
            ("queue", queue_text(report)),
            ("last decision", last),
        ]
    )
