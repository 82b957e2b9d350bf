"""The sweep: expire leases, judge node health from heartbeat freshness, withdraw offers
nobody can claim, and place what waits. One transaction per sweep; safe on every replica at
once (writers are serialized and every condition is re-read inside the transaction)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, offers, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.eventlog.store import append
from control_plane.fleet.trust import apply_health, record_outcome, release_probation
from control_plane.fleet.trust_model import health_for
from control_plane.ids import new_id
from control_plane.scheduling.scheduler import SchedulerContext, schedule_pending
from control_plane.units.claims import finish_attempt
from control_plane.units.queue import adjust_depth, queue_key
from shared.enums import NodeHealth, WorkUnitStatus
from shared.events import (
    EventType,
    NewEvent,
    NodeHealthChanged,
    WorkUnitLeaseExpired,
    WorkUnitUnscheduled,
)

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
    report = SweepReport()
    with write_transaction(db) as uow:
        report.expired = _expire_leases(uow)
        report.health_changes = _judge_health(uow, timings)
        release_probation(uow)
        report.withdrawn = _withdraw_offers(uow, timings)
        report.placed = schedule_pending(uow, ctx)
    return report


def _expire_leases(uow: UnitOfWork) -> int:
    rows = uow.conn.execute(
        select(work_units)
        .where(
            work_units.c.status == WorkUnitStatus.CLAIMED.value,
            work_units.c.lease_expires_us < uow.now_us,
        )
        .order_by(work_units.c.lease_expires_us)
        .limit(BATCH)
    ).all()
    for row in rows:
        requeue = row.attempt < row.max_attempts
        finish_attempt(
            uow,
            row,
            EventType.WORKUNIT_LEASE_EXPIRED,
            WorkUnitLeaseExpired(node_id=row.node_id, attempt=row.attempt, requeued=requeue),
            requeue=requeue,
            error={"reason": "lease_expired", "attempt": row.attempt, "node_id": row.node_id},
            event_id=f"{row.id}/{row.attempt}/lease_expired",
        )
        record_outcome(uow, row.node_id, EventType.WORKUNIT_LEASE_EXPIRED)
    return len(rows)


def _judge_health(uow: UnitOfWork, t: SweepTimings) -> int:
    changes = 0
    for row in uow.conn.execute(
        select(nodes.c.node_id, nodes.c.health, nodes.c.last_heartbeat_us)
    ).all():
        age_s = (uow.now_us - (row.last_heartbeat_us or 0)) / 1_000_000
        new = health_for(age_s, t.heartbeat_interval_s, t.heartbeat_timeout_s)
        if new.value == row.health:
            continue
        # only heartbeats (and registration) make a node healthy again
        if new is NodeHealth.HEALTHY:
            continue
        if row.health == NodeHealth.UNHEALTHY.value:
            continue
        uow.conn.execute(
            update(nodes).where(nodes.c.node_id == row.node_id).values(health=new.value)
        )
        append(
            uow,
            [
                NewEvent(
                    event_id=new_id("evt"),
                    type=EventType.NODE_HEALTH_CHANGED,
                    stream_id=row.node_id,
                    payload=NodeHealthChanged.model_validate(
                        {
                            "node_id": row.node_id,
                            "from": row.health,
                            "to": new.value,
                            "reason": f"no heartbeat for {age_s:.1f}s",
                            "heartbeat_age_s": round(age_s, 3),
                        }
                    ),
                )
            ],
        )
        apply_health(uow, row.node_id, new)
        changes += 1
    return changes


def _withdraw_offers(uow: UnitOfWork, t: SweepTimings) -> int:
    """Scheduled units whose placed node can no longer take them, or whose offer is older than
    the offer timeout, go back to the queue at the same attempt."""
    bad_nodes = {
        r.node_id: "node " + reason
        for r in uow.conn.execute(
            select(nodes.c.node_id, nodes.c.health, nodes.c.drained, nodes.c.quarantined)
        )
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
    for row in rows:
        reason = bad_nodes.get(row.node_id, "offer not claimed in time")
        uow.conn.execute(
            update(nodes).where(nodes.c.node_id == row.node_id).values(running=nodes.c.running - 1)
        )
        uow.conn.execute(delete(offers).where(offers.c.work_unit_id == row.id))
        uow.conn.execute(
            update(work_units)
            .where(work_units.c.id == row.id)
            .values(status=WorkUnitStatus.QUEUED.value, node_id=None, updated_at_us=uow.now_us)
        )
        adjust_depth(uow, [(queue_key(row.priority, row.tenant_id, row.kind, row.region), 1)])
        append(
            uow,
            [
                NewEvent(
                    event_id=new_id("evt"),
                    type=EventType.WORKUNIT_UNSCHEDULED,
                    tenant_id=row.tenant_id,
                    stream_id=row.id,
                    correlation_id=row.execution_session_id,
                    payload=WorkUnitUnscheduled(
                        node_id=row.node_id, attempt=row.attempt, reason=reason
                    ),
                )
            ],
        )
        uow.wake(f"unit:{row.id}")
    return len(rows)
