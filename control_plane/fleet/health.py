"""Node health from heartbeat freshness: the sweep's judgement, and the
``node.health.changed`` events that heartbeats and registrations emit when a node recovers.

Only heartbeats (and registration) make a node healthy again; the judgement only ever moves
a node down (healthy -> suspect -> unhealthy), and each move is folded into its trust score.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select, update

from control_plane.db.tables import nodes
from control_plane.db.uow import UnitOfWork
from control_plane.eventlog.emit import emit_all, event
from control_plane.fleet.trust import apply_health
from control_plane.fleet.trust_model import health_for
from shared.enums import NodeHealth
from shared.events import NewEvent, NodeHealthChanged

_FRESHNESS = select(nodes.c.node_id, nodes.c.health, nodes.c.last_heartbeat_us)
_SET_HEALTH = (
    update(nodes).where(nodes.c.node_id == bindparam("b_node")).values(health=bindparam("b_health"))
)


def changed(node_id: str, old: str, new: str, reason: str, **extra: Any) -> NewEvent:
    """The ``node.health.changed`` event of a move from ``old`` to ``new``."""
    return event(
        NodeHealthChanged.model_validate(
            {"node_id": node_id, "from": old, "to": new, "reason": reason, **extra}
        ),
        stream_id=node_id,
    )


def judge(uow: UnitOfWork, heartbeat_interval_s: float, heartbeat_timeout_s: float) -> int:
    """Mark nodes whose heartbeat is late suspect or unhealthy; returns how many moved."""
    changes = 0
    for row in uow.conn.execute(_FRESHNESS).all():
        age_s = (uow.now_us - (row.last_heartbeat_us or 0)) / 1_000_000
        new = health_for(age_s, heartbeat_interval_s, heartbeat_timeout_s)
        if new.value == row.health:
            continue
        # only heartbeats (and registration) make a node healthy again
        if new is NodeHealth.HEALTHY:
            continue
        if row.health == NodeHealth.UNHEALTHY.value:
            continue
        uow.conn.execute(_SET_HEALTH, {"b_node": row.node_id, "b_health": new.value})
        reason = f"no heartbeat for {age_s:.1f}s"
        emit_all(
            uow,
            [changed(row.node_id, row.health, new.value, reason, heartbeat_age_s=round(age_s, 3))],
        )
        apply_health(uow, row.node_id, new)
        changes += 1
    return changes
