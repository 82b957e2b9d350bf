"""Capacity mode: reading it (and the capacity report the API shows), manual overrides with a
TTL, and clearing them."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, func, select, update

from control_plane.db.engine import Database
from control_plane.db.tables import capacity_state, nodes, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.eventlog.emit import emit
from control_plane.units.queries import depth_by_priority
from shared.enums import CapacityMode, NodeHealth, WorkUnitStatus
from shared.events import (
    CapacityAdmissionModeChanged,
    CapacityOverrideCleared,
    CapacityOverrideSet,
)
from shared.wire import CapacityReport

_MODE = select(capacity_state.c.mode).where(capacity_state.c.id == 1)


def current_mode(conn: Connection) -> CapacityMode:
    """The admission mode in force (``open`` until the first decision)."""
    mode = conn.execute(_MODE).scalar()
    return CapacityMode(mode) if mode else CapacityMode.OPEN


def load_state(conn: Connection) -> Any:
    return conn.execute(select(capacity_state).where(capacity_state.c.id == 1)).first()


def ensure_state(uow: UnitOfWork) -> Any:
    row = load_state(uow.conn)
    if row is None:
        uow.conn.execute(
            capacity_state.insert().values(
                id=1, mode=CapacityMode.OPEN.value, mode_since_us=uow.now_us
            )
        )
        row = load_state(uow.conn)
    return row


def change_mode(
    uow: UnitOfWork,
    to: CapacityMode,
    reason: str,
    source: str,
    inputs: dict[str, Any],
    ttl_s: float | None = None,
) -> bool:
    """Set the mode (an event) if it differs; returns whether anything changed."""
    row = ensure_state(uow)
    old = CapacityMode(row.mode)
    if old is to:
        return False
    uow.conn.execute(
        update(capacity_state)
        .where(capacity_state.c.id == 1)
        .values(mode=to.value, mode_since_us=uow.now_us)
    )
    emit(
        uow,
        CapacityAdmissionModeChanged(
            from_=old, to=to, reason=reason, source=source, inputs=inputs, ttl_s=ttl_s
        ),
        stream_id="capacity",
    )
    uow.wake("queue", "capacity")
    return True


def set_override(
    db: Database, mode: CapacityMode, reason: str, ttl_s: float | None
) -> CapacityReport:
    """A manual override: pins ``mode`` for ``ttl_s`` (``None``: until cleared), replacing
    any override in force. Always recorded as ``capacity.override.set``; only a mode that
    differs from the one in force also appends ``capacity.admission.mode.changed``, so
    pinning the mode already in force still holds it against the autoscaler. Returns the
    capacity report once it is committed."""
    with write_transaction(db) as uow:
        _override(uow, mode, reason, ttl_s)
    return read_report(db)


def _override(uow: UnitOfWork, mode: CapacityMode, reason: str, ttl_s: float | None) -> None:
    change_mode(uow, mode, reason, "manual", {}, ttl_s)  # nothing when already in force
    until = uow.now_us + int(ttl_s * 1_000_000) if ttl_s else None
    uow.conn.execute(
        update(capacity_state)
        .where(capacity_state.c.id == 1)
        .values(override_active=True, override_until_us=until)
    )
    emit(uow, CapacityOverrideSet(mode=mode, reason=reason, ttl_s=ttl_s), stream_id="capacity")
    uow.wake("capacity")


def clear_override(db: Database, reason: str) -> bool:
    with write_transaction(db) as uow:
        return _clear(uow, reason)


def _clear(uow: UnitOfWork, reason: str) -> bool:
    row = ensure_state(uow)
    if not row.override_active:
        return False
    uow.conn.execute(
        update(capacity_state)
        .where(capacity_state.c.id == 1)
        .values(override_active=False, override_until_us=None)
    )
    emit(uow, CapacityOverrideCleared(reason=reason), stream_id="capacity")
    return True


def expire_override(uow: UnitOfWork) -> bool:
    """End an override whose TTL ran out (called by the autoscaler tick)."""
    row = ensure_state(uow)
    if row.override_active and row.override_until_us and row.override_until_us <= uow.now_us:
        return _clear(uow, "override ttl expired")
    return False


def override_active(conn: Connection, now_us: int) -> bool:
    row = load_state(conn)
    if row is None or not row.override_active:
        return False
    return row.override_until_us is None or row.override_until_us > now_us


def read_report(db: Database) -> CapacityReport:
    """The query behind ``GET /v1/capacity`` (and the metrics): ``report``."""
    with db.engine.connect() as conn:
        return report(conn)


def report(conn: Connection) -> CapacityReport:
    """The mode in force, healthy and desired nodes, queue depth by priority, running units,
    utilization and the autoscaler's last decision."""
    state = load_state(conn)
    fleet = conn.execute(
        select(nodes.c.health, nodes.c.max_concurrency, nodes.c.drained, nodes.c.quarantined)
    ).all()
    healthy = [
        n
        for n in fleet
        if n.health == NodeHealth.HEALTHY.value and not n.drained and not n.quarantined
    ]
    slots = sum(n.max_concurrency for n in healthy)
    running = int(
        conn.execute(
            select(func.count()).where(work_units.c.status == WorkUnitStatus.CLAIMED.value)
        ).scalar_one()
    )
    return CapacityReport(
        mode=CapacityMode(state.mode) if state else CapacityMode.OPEN,
        desired_nodes=int(state.desired_nodes) if state else len(healthy),
        healthy_nodes=len(healthy),
        queue_depth=depth_by_priority(conn),
        running=running,
        utilization=round(running / slots, 4) if slots else 0.0,
        last_decision=orjson.loads(state.last_decision) if state and state.last_decision else None,
    )
