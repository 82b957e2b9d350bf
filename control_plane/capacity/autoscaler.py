"""The autoscaler loop: one tick is one write transaction, then the actuator.

A tick, on every replica, every ``KRAKO_AUTOSCALER_INTERVAL_S``::

    with write_transaction(db) as uow:
        take or renew the "autoscaler" lease (leader.py)     -> not the leader: stop here
        end a manual override whose TTL ran out              (capacity.override.cleared)
        read live metrics (queue depth by priority, oldest queued age per priority, claimed
            units, healthy schedulable nodes and their slots)
        load the controller state (the mode and its start from capacity_state itself, since
            a manual override changes them; the scaling memory from controller_state)
        decide(state, metrics, now, params, override_active)  (controller.py: pure)
        append the decisions: capacity.admission.mode.changed (source "autoscaler") and
            capacity.scale.requested, each with the inputs that led to it; set desired_nodes
        store last_decision (what was seen and decided, even when nothing changed) and the
            controller state
    # committed: only now does the actuator act (log, local agents, webhook)

Exactly one replica acts at a time: the lease is taken inside the serialized write
transaction, judged by the transaction's clock, and expires ``3 x interval`` (at least 2 s)
after the last renewal, so a leader that dies hands over within that time (one that stops
cleanly releases it at once). The floor keeps a leader that a busy machine stalls for a
moment from losing the lease to a replica that would decide the same thing.

This module wires the pure controller to the scheduler's capacity commands, so it sits above
``scheduler`` (``controller.py`` stays pure and below it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, func, select, update

from control_plane.capacity import leader
from control_plane.capacity import mode as capacity
from control_plane.capacity.actuators import Actuator, ScaleAction, build_actuator
from control_plane.capacity.controller import (
    ControllerParams,
    ControllerState,
    Decision,
    Metrics,
    ModeChange,
    ScaleRequest,
    decide,
    desired_nodes_for,
    signals,
)
from control_plane.db.engine import Database
from control_plane.db.tables import capacity_state, events, nodes, queue_depth, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.eventlog.emit import emit
from control_plane.eventlog.store import us_to_dt
from control_plane.settings import AutoscalerSettings, Settings
from control_plane.units.queries import depth_by_priority
from shared.enums import CapacityMode, NodeHealth, WorkUnitStatus
from shared.events import CapacityScaleRequested, EventType

__all__ = [
    "LEASE_NAME",
    "AutoscalerService",
    "TickOutcome",
    "create_service",
    "params_from_settings",
    "read_metrics",
    "run_tick",
]

LEASE_NAME = "autoscaler"
LEASE_INTERVALS = 3  # the lease outlives this many missed ticks
MIN_LEASE_TTL_S = 2.0  # ... and never less than this: a short stall is not a handover
_MAX_AGE_QUERIES = 200  # past this many non-empty queues, one aggregate query instead

log = logging.getLogger("krako.autoscaler")


def params_from_settings(autoscaler: AutoscalerSettings) -> ControllerParams:
    """The controller's thresholds from the ``KRAKO_AUTOSCALER_*`` group (ValueError when
    they contradict each other: an up threshold below its down one, min above max nodes)."""
    return ControllerParams(
        throttle_up_backlog_per_slot=autoscaler.throttle_up_backlog_per_slot,
        throttle_down_backlog_per_slot=autoscaler.throttle_down_backlog_per_slot,
        throttle_up_age_s=autoscaler.throttle_up_age_s,
        throttle_down_age_s=autoscaler.throttle_down_age_s,
        critical_up_backlog_per_slot=autoscaler.critical_up_backlog_per_slot,
        critical_down_backlog_per_slot=autoscaler.critical_down_backlog_per_slot,
        critical_up_age_s=autoscaler.critical_up_age_s,
        critical_down_age_s=autoscaler.critical_down_age_s,
        saturated_utilization=autoscaler.saturated_utilization,
        idle_utilization=autoscaler.idle_utilization,
        idle_hold_s=autoscaler.idle_hold_s,
        min_hold_s=autoscaler.min_hold_s,
        min_nodes=autoscaler.min_nodes,
        max_nodes=autoscaler.max_nodes,
        target_utilization=autoscaler.target_utilization,
        target_backlog_per_slot=autoscaler.target_backlog_per_slot,
        default_slots_per_node=autoscaler.slots_per_node,
        scale_up_cooldown_s=autoscaler.scale_up_cooldown_s,
        scale_down_window_s=autoscaler.scale_down_window_s,
    )


# --------------------------------------------------------------------------- metrics


def read_metrics(conn: Connection, now_us: int) -> Metrics:
    """The live metrics the controller decides on, read in the tick's transaction.

    ``running`` is the claimed units; slots are those of healthy nodes that take placements
    (not drained, not quarantined), busy counting offered and claimed units alike.
    """
    depth = depth_by_priority(conn)
    running = int(
        conn.execute(
            select(func.count()).where(work_units.c.status == WorkUnitStatus.CLAIMED.value)
        ).scalar_one()
    )
    healthy = total = free = 0
    for r in conn.execute(
        select(nodes.c.max_concurrency, nodes.c.running).where(
            nodes.c.health == NodeHealth.HEALTHY.value,
            nodes.c.drained.is_(False),
            nodes.c.quarantined.is_(False),
        )
    ):
        healthy += 1
        total += int(r.max_concurrency)
        free += max(0, int(r.max_concurrency) - int(r.running))
    ages = oldest_age_by_priority(conn, now_us)
    return Metrics(
        queue_depth=depth,
        running=running,
        healthy_nodes=healthy,
        free_slots=free,
        total_slots=total,
        oldest_queued_age_s=max(ages.values(), default=0.0),
        oldest_age_by_priority=ages,
    )


def oldest_age_by_priority(conn: Connection, now_us: int) -> dict[str, float]:
    """Age in seconds of the oldest queued unit of each non-empty priority.

    One index seek per non-empty queue (the queue index ends in ``submit_seq``, so its head
    is the oldest submission), instead of scanning every queued unit under the write lock.
    """
    keys = conn.execute(
        select(
            queue_depth.c.priority,
            queue_depth.c.tenant_id,
            queue_depth.c.kind,
            queue_depth.c.region,
        ).where(queue_depth.c.queued > 0)
    ).all()
    oldest: dict[int, int] = {}
    if len(keys) > _MAX_AGE_QUERIES:
        for priority, created in conn.execute(
            select(work_units.c.priority, func.min(work_units.c.created_at_us))
            .where(work_units.c.status == WorkUnitStatus.QUEUED.value)
            .group_by(work_units.c.priority)
        ):
            oldest[int(priority)] = int(created)
    else:
        for priority, tenant_id, kind, region in keys:
            created = conn.execute(
                select(work_units.c.created_at_us)
                .where(
                    work_units.c.status == WorkUnitStatus.QUEUED.value,
                    work_units.c.priority == priority,
                    work_units.c.tenant_id == tenant_id,
                    work_units.c.kind == kind,
                    work_units.c.region == region if region else work_units.c.region.is_(None),
                )
                .order_by(work_units.c.submit_seq)
                .limit(1)
            ).scalar()
            if created is not None:
                p = int(priority)
                oldest[p] = min(oldest.get(p, int(created)), int(created))
    return {f"p{p}": round(max(0, now_us - c) / 1e6, 3) for p, c in sorted(oldest.items())}


# --------------------------------------------------------------------------- state


def _load_state(row: Any) -> ControllerState:
    """The controller state: mode and mode_since from the row (a manual change moves them),
    desired_nodes from the row, the scaling memory from ``controller_state``."""
    memory: Mapping[str, Any] = {}
    if row.controller_state:
        try:
            loaded = orjson.loads(row.controller_state)
            memory = loaded if isinstance(loaded, dict) else {}
        except orjson.JSONDecodeError:
            log.warning("capacity_state.controller_state is not JSON; starting afresh")
    return ControllerState(
        mode=CapacityMode(row.mode),
        mode_since=int(row.mode_since_us) / 1e6,
        desired_nodes=int(row.desired_nodes),
        last_scale_at=_opt_float(memory.get("last_scale_at")),
        low_since=_opt_float(memory.get("low_since")),
        low_max=int(memory.get("low_max") or 0),
        idle_since=_opt_float(memory.get("idle_since")),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _dump_state(state: ControllerState) -> str:
    return orjson.dumps(
        {
            "last_scale_at": state.last_scale_at,
            "low_since": state.low_since,
            "low_max": state.low_max,
            "idle_since": state.idle_since,
        }
    ).decode()


def _rfc3339(us: int) -> str:
    return us_to_dt(us).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the tick


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """What one tick did. ``leader`` False: another replica holds the lease, nothing else."""

    leader: bool
    now_us: int
    mode: CapacityMode | None = None
    desired_nodes: int = 0
    decisions: tuple[Decision, ...] = ()
    scale: ScaleAction | None = None
    last_decision: dict[str, Any] = field(default_factory=dict)


def run_tick(
    db: Database, params: ControllerParams, holder: str, lease_ttl_s: float
) -> TickOutcome:
    """One autoscaler tick as ``holder``: one write transaction (see the module docstring)."""
    with write_transaction(db, settled=True) as uow:
        if not leader.acquire(uow, LEASE_NAME, holder, lease_ttl_s):
            return TickOutcome(leader=False, now_us=uow.now_us)
        return _lead(uow, params, holder)


def _lead(uow: UnitOfWork, params: ControllerParams, holder: str) -> TickOutcome:
    conn, now_us = uow.conn, uow.now_us
    override_expired = capacity.expire_override(uow)
    row = capacity.ensure_state(uow)
    override = capacity.override_active(conn, now_us)
    metrics = read_metrics(conn, now_us)
    state = _load_state(row)
    new_state, decisions = decide(state, metrics, now_us / 1e6, params, override)

    recorded: list[dict[str, Any]] = []
    scale: ScaleAction | None = None
    for decision in decisions:
        if isinstance(decision, ModeChange):
            inputs = {**decision.inputs, "replica": holder}
            if capacity.change_mode(uow, decision.to_mode, decision.reason, "autoscaler", inputs):
                seq, event_id = _last_mode_event(conn)
                recorded.append(
                    {
                        "type": EventType.CAPACITY_ADMISSION_MODE_CHANGED.value,
                        "event_id": event_id,
                        "seq": seq,
                        "from": decision.from_mode.value,
                        "to": decision.to_mode.value,
                        "reason": decision.reason,
                    }
                )
        elif isinstance(decision, ScaleRequest):
            scale = _request_scale(uow, decision, holder)
            recorded.append(
                {
                    "type": EventType.CAPACITY_SCALE_REQUESTED.value,
                    "event_id": scale.event_id,
                    "seq": scale.seq,
                    "from": decision.from_nodes,
                    "to": decision.to_nodes,
                    "reason": decision.reason,
                }
            )

    mode = new_state.mode
    last_decision: dict[str, Any] = {
        "tick_at": _rfc3339(now_us),
        "replica": holder,
        "mode": mode.value,
        "mode_since": _rfc3339(now_us if mode is not state.mode else int(row.mode_since_us)),
        "override_active": override,
        "override_expired": override_expired,
        "desired_nodes": new_state.desired_nodes,
        "recommended_nodes": desired_nodes_for(metrics, params),
        "changed": bool(recorded),
        "decisions": recorded,
        "inputs": signals(metrics),
    }
    conn.execute(
        update(capacity_state)
        .where(capacity_state.c.id == 1)
        .values(
            last_decision=orjson.dumps(last_decision).decode(),
            controller_state=_dump_state(new_state),
        )
    )
    return TickOutcome(
        leader=True,
        now_us=now_us,
        mode=mode,
        desired_nodes=new_state.desired_nodes,
        decisions=tuple(decisions),
        scale=scale,
        last_decision=last_decision,
    )


def _last_mode_event(conn: Connection) -> tuple[int, str]:
    row = conn.execute(
        select(events.c.seq, events.c.event_id)
        .where(events.c.type == EventType.CAPACITY_ADMISSION_MODE_CHANGED.value)
        .order_by(events.c.seq.desc())
        .limit(1)
    ).one()
    return int(row.seq), str(row.event_id)


def _request_scale(uow: UnitOfWork, decision: ScaleRequest, holder: str) -> ScaleAction:
    inputs = {**decision.inputs, "replica": holder}
    payload = CapacityScaleRequested(
        from_=decision.from_nodes, to=decision.to_nodes, reason=decision.reason, inputs=inputs
    )
    stored = emit(uow, payload, stream_id="capacity")
    uow.conn.execute(
        update(capacity_state)
        .where(capacity_state.c.id == 1)
        .values(desired_nodes=decision.to_nodes)
    )
    uow.wake("capacity")
    return ScaleAction(
        event_id=stored.event_id,
        seq=stored.seq,
        from_nodes=decision.from_nodes,
        to_nodes=decision.to_nodes,
        reason=decision.reason,
        inputs=inputs,
        requested_at_us=uow.now_us,
    )


# --------------------------------------------------------------------------- the service


def _holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class AutoscalerService:
    """The autoscaler of one control-plane process: ``tick`` for the loop, ``close`` at
    shutdown (releases the lease, stops what the actuator runs)."""

    def __init__(
        self,
        db: Database,
        params: ControllerParams,
        actuator: Actuator,
        interval_s: float,
        holder: str | None = None,
    ) -> None:
        self.db = db
        self.params = params
        self.actuator = actuator
        self.interval_s = interval_s
        self.lease_ttl_s = max(LEASE_INTERVALS * interval_s, MIN_LEASE_TTL_S)
        self.holder = holder or _holder_id()
        self.is_leader = False
        self._lock = threading.Lock()  # a tick and close never overlap
        self._closed = False

    def tick(self) -> TickOutcome | None:
        """One tick, then (as leader, after the commit) the actuator. Never raises for an
        actuator failure; a database failure propagates to the loop, which retries."""
        with self._lock:
            if self._closed:
                return None
            outcome = run_tick(self.db, self.params, self.holder, self.lease_ttl_s)
            if outcome.leader != self.is_leader:
                log.info(
                    "autoscaler %s: %s",
                    self.holder,
                    "leading" if outcome.leader else "another replica leads",
                )
                self.is_leader = outcome.leader
            if not outcome.leader:
                return outcome
            for d in outcome.decisions:
                if isinstance(d, ModeChange):
                    log.info("admission mode %s -> %s: %s", d.from_mode, d.to_mode, d.reason)
            try:
                self.actuator.actuate(outcome.desired_nodes, outcome.scale)
            except Exception:
                log.exception("actuator %s failed; tried again next tick", self.actuator.name)
            return outcome

    def close(self) -> None:
        """Stop the actuator and hand the lease over (best effort: it expires anyway)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.actuator.close()
            except Exception:
                log.exception("actuator %s failed to close", self.actuator.name)
            try:
                leader.release(self.db, LEASE_NAME, self.holder)
            except Exception:
                log.warning("could not release the autoscaler lease; it expires by itself")


def create_service(settings: Settings, db: Database) -> AutoscalerService:
    """The service ``settings`` describe (ValueError on a bad autoscaler configuration).

    The actuator sees all of ``settings``: the local one needs the data directory and the
    join token besides its own group."""
    params = params_from_settings(settings.autoscaler)
    return AutoscalerService(
        db, params, build_actuator(settings, db), settings.autoscaler.interval_s
    )
