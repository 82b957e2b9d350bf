"""The sweep: expire leases, judge node health from heartbeat freshness, withdraw offers
nobody can claim, and place what waits. One transaction per sweep; safe on every replica at
once (writers are serialized and every condition is re-read inside the transaction)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.fleet import health
from control_plane.fleet.trust import record_outcome, release_probation
from control_plane.scheduling.scheduler import SchedulerContext, schedule_pending
from control_plane.units import lifecycle
from shared.enums import NodeHealth, WorkUnitStatus
from shared.events import EventType

BATCH = 500


@dataclass(frozen=True)
class SweepTimings:
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    offer_timeout_s: float


@dataclass
class SweepReport:
    expired: int = 0
    health_changes: int = 0
    withdrawn: int = 0
    placed: int = 0


def sweep(db: Database, ctx: SchedulerContext, timings: SweepTimings) -> SweepReport:
    """One pass of every step, in one transaction."""
    report = SweepReport()
    with write_transaction(db) as uow:
        report.expired = _expire_leases(uow)
        report.health_changes = health.judge(
            uow, timings.heartbeat_interval_s, timings.heartbeat_timeout_s
        )
        release_probation(uow)
        report.withdrawn = _withdraw_offers(uow, timings)
        report.placed = schedule_pending(uow, ctx)
    return report


_EXPIRED = (
    select(work_units)
    .where(
        work_units.c.status == WorkUnitStatus.CLAIMED.value,
        work_units.c.lease_expires_us < bindparam("b_now"),
    )
    .order_by(work_units.c.lease_expires_us)
    .limit(BATCH)
)


def _expire_leases(uow: UnitOfWork) -> int:
    rows = uow.conn.execute(_EXPIRED, {"b_now": uow.now_us}).all()
    lifecycle.expire(uow, rows)
    for row in rows:
        record_outcome(uow, row.node_id, EventType.WORKUNIT_LEASE_EXPIRED)
    return len(rows)


_NODE_STATES = select(nodes.c.node_id, nodes.c.health, nodes.c.drained, nodes.c.quarantined)


def _withdraw_offers(uow: UnitOfWork, t: SweepTimings) -> int:
    """Scheduled units whose placed node can no longer take them, or whose offer is older than
    the offer timeout, go back to the queue at the same attempt."""
    bad_nodes = {
        r.node_id: "node " + reason
        for r in uow.conn.execute(_NODE_STATES)
        for reason in [
            "unhealthy"
            if r.health == NodeHealth.UNHEALTHY.value
            else "drained"
            if r.drained
            else "quarantined"
            if r.quarantined
            else ""
        ]
        if reason
    }
    cutoff = uow.now_us - int(t.offer_timeout_s * 1_000_000)
    query = select(work_units).where(work_units.c.status == WorkUnitStatus.SCHEDULED.value)
    stale = work_units.c.updated_at_us < cutoff
    if bad_nodes:
        query = query.where(stale | work_units.c.node_id.in_(sorted(bad_nodes)))
    else:
        query = query.where(stale)
    rows = uow.conn.execute(query.order_by(work_units.c.updated_at_us).limit(BATCH)).all()
    lifecycle.unschedule(
        uow, [(row, bad_nodes.get(row.node_id, "offer not claimed in time")) for row in rows]
    )
    return len(rows)
