"""Nodes: the registry as a table."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from shared.wire import Node

HEALTH_STYLE = {"healthy": "green", "suspect": "yellow", "unhealthy": "red"}
COLUMNS = ("node", "region", "kinds", "running", "health", "trust", "state", "heartbeat")


def nodes_table(nodes: list[Node]) -> Table:
    """One row per node: where it runs, what, how busy, how healthy and trusted."""
    table = Table(title=f"{len(nodes)} node(s)", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("running", "trust") else "left")
    for node in nodes:
        state = ", ".join(
            s for s, on in (("drained", node.drained), ("quarantined", node.quarantined)) if on
        )
        table.add_row(
            node.node_id,
            node.region or "-",
            ",".join(k.value for k in node.supported_kinds),
            f"{node.running}/{node.max_concurrency}",
            Text(node.health.value, style=HEALTH_STYLE.get(node.health.value, "")),
            f"{node.trust:.2f}",
            state or "active",
            node.last_heartbeat_at.isoformat() if node.last_heartbeat_at else "never",
        )
    return table
