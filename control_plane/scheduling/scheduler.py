"""Placement inside a command's transaction: read the fleet and the heads of the non-empty
queues, let the pure code (``ordering.schedule_pass``, ``placement.place_batch``) decide, then
apply the decisions through ``units.lifecycle.schedule`` (``workunit.scheduled`` events,
offers, node slot counts, queue depth, tenant turns).

Called at the end of every command that can free a slot or add work (submit, complete, fail,
poll, register, the reaper, the sweep), so a unit is placed as soon as a slot exists.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select

from control_plane.capacity.mode import current_mode
from control_plane.db.tables import nodes, queue_depth, tenants, work_units
from control_plane.db.uow import UnitOfWork
from control_plane.scheduling.admission import admits_priority
from control_plane.scheduling.ordering import group_heads, schedule_pass
from control_plane.scheduling.placement import NodeView, PlacementWeights, UnitView
from control_plane.units import lifecycle
from shared.enums import NodeHealth, WorkUnitStatus

_MAX_STREAKS = 10_000


@dataclass
class SchedulerContext:
    """Placement parameters from settings, and the per-process anti-affinity streaks."""

    weights: PlacementWeights
    fanout: int
    streaks: OrderedDict[str, tuple[str, int]] = field(default_factory=OrderedDict)

    def remember(self, updated: dict[str, tuple[str, int]]) -> None:
        for session, streak in updated.items():
            self.streaks[session] = streak
            self.streaks.move_to_end(session)
        while len(self.streaks) > _MAX_STREAKS:
            self.streaks.popitem(last=False)


_FLEET = select(
    nodes.c.node_id,
    nodes.c.region,
    nodes.c.supported_kinds,
    nodes.c.max_concurrency,
    nodes.c.running,
    nodes.c.health,
    nodes.c.quarantined,
    nodes.c.drained,
    nodes.c.trust,
).order_by(nodes.c.node_id)


def node_views(uow: UnitOfWork) -> list[NodeView]:
    rows = uow.conn.execute(_FLEET)
    return [
        NodeView(
            node_id=r.node_id,
            region=r.region,
            supported_kinds=frozenset(k for k in r.supported_kinds.split(",") if k),
            max_concurrency=r.max_concurrency,
            running=r.running,
            healthy=r.health == NodeHealth.HEALTHY.value,
            quarantined=bool(r.quarantined),
            drained=bool(r.drained),
            trust=float(r.trust),
        )
        for r in rows
    ]


def _eligible_free(n: NodeView) -> int:
    if not n.healthy or n.quarantined or n.drained:
        return 0
    return max(0, n.max_concurrency - n.running)


_DEPTH = (
    select(
        queue_depth.c.priority,
        queue_depth.c.tenant_id,
        queue_depth.c.kind,
        queue_depth.c.region,
        queue_depth.c.queued,
    )
    .where(queue_depth.c.queued > 0)
    .order_by(queue_depth.c.priority, queue_depth.c.tenant_id, queue_depth.c.kind)
)


def _heads(region_clause: Any) -> Any:
    return (
        select(
            work_units.c.id,
            work_units.c.tenant_id,
            work_units.c.kind,
            work_units.c.priority,
            work_units.c.region,
            work_units.c.execution_session_id,
            work_units.c.submit_seq,
            work_units.c.attempt,
        )
        .where(
            work_units.c.status == WorkUnitStatus.QUEUED.value,
            work_units.c.priority == bindparam("b_priority"),
            work_units.c.tenant_id == bindparam("b_tenant"),
            work_units.c.kind == bindparam("b_kind"),
            region_clause,
        )
        .order_by(work_units.c.submit_seq)
        .limit(bindparam("b_limit"))
    )


# the first queued units of one (priority, tenant, kind, region) queue, built once
_HEADS_IN_REGION = _heads(work_units.c.region == bindparam("b_region"))
_HEADS_ANYWHERE = _heads(work_units.c.region.is_(None))


def schedule_pending(uow: UnitOfWork, ctx: SchedulerContext) -> int:
    """Place as many queued units as free slots allow; returns how many were placed."""
    conn = uow.conn
    depth = conn.execute(_DEPTH).all()
    if not depth:
        return 0
    fleet = node_views(uow)
    free_nodes = [n for n in fleet if _eligible_free(n) > 0]
    budget = sum(_eligible_free(n) for n in free_nodes)
    if budget == 0:
        return 0
    mode = current_mode(conn)
    kinds = {k for n in free_nodes for k in n.supported_kinds}
    regions = {n.region for n in free_nodes}

    candidates: list[UnitView] = []
    attempts: dict[str, int] = {}
    for priority, tenant_id, kind, region, queued in depth:
        if not admits_priority(mode, priority) or kind not in kinds:
            continue
        if region and region not in regions:
            continue
        params = {"b_priority": priority, "b_tenant": tenant_id, "b_kind": kind}
        if region:
            params["b_region"] = region
        params["b_limit"] = min(budget, queued)
        for r in conn.execute(_HEADS_IN_REGION if region else _HEADS_ANYWHERE, params):
            attempts[r.id] = r.attempt
            candidates.append(
                UnitView(
                    id=r.id,
                    tenant_id=r.tenant_id,
                    kind=r.kind,
                    priority=r.priority,
                    region=r.region,
                    execution_session_id=r.execution_session_id,
                    seq=r.submit_seq,
                )
            )
    if not candidates:
        return 0
    running_by_tenant, max_by_tenant, served = _tenant_load(uow, {u.tenant_id for u in candidates})
    result = schedule_pass(
        group_heads(candidates, budget, by_constraint=True),
        fleet,
        ctx.weights,
        ctx.fanout,
        dict(ctx.streaks),
        running_by_tenant,
        max_by_tenant,
        budget,
        last_served_by_tenant=served,
    )
    ctx.remember(dict(result.streaks))
    if not result.placements:
        return 0
    by_id = {u.id: u for u in candidates}
    lifecycle.schedule(uow, result.placements, by_id, attempts)
    return len(result.placements)


def defer_placement(uow: UnitOfWork, ctx: SchedulerContext) -> None:
    """Place once, just before the commit, for every command of the batch that freed a slot."""
    uow.defer("placement", lambda u: _place_quietly(u, ctx))


def _place_quietly(uow: UnitOfWork, ctx: SchedulerContext) -> None:
    schedule_pending(uow, ctx)


_TENANT_TURNS = select(tenants.c.tenant_id, tenants.c.max_running, tenants.c.last_placed_seq).where(
    tenants.c.tenant_id.in_(bindparam("b_ids", expanding=True))
)
_IN_FLIGHT = (
    select(work_units.c.tenant_id, func.count().label("n"))
    .where(
        work_units.c.tenant_id.in_(bindparam("b_ids", expanding=True)),
        work_units.c.status.in_([WorkUnitStatus.SCHEDULED.value, WorkUnitStatus.CLAIMED.value]),
    )
    .group_by(work_units.c.tenant_id)
)


def _tenant_load(
    uow: UnitOfWork, tenant_ids: set[str]
) -> tuple[dict[str, int], dict[str, int | None], dict[str, int]]:
    """Units in flight (scheduled or claimed) per tenant, for the fair share of every tenant,
    the caps of the tenants that have one, and when each was last served."""
    ids = sorted(tenant_ids)
    limited: dict[str, int | None] = {}
    served: dict[str, int] = {}
    for r in uow.conn.execute(_TENANT_TURNS, {"b_ids": ids}):
        served[r.tenant_id] = int(r.last_placed_seq)
        if r.max_running is not None:
            limited[r.tenant_id] = r.max_running
    running = {r.tenant_id: int(r.n) for r in uow.conn.execute(_IN_FLIGHT, {"b_ids": ids})}
    return running, limited, served
