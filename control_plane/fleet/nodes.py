"""Node commands: register (or re-register), heartbeat (lease renewal, revocations), drain."""

from __future__ import annotations

from sqlalchemy import select, update

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, work_units
from control_plane.db.uow import write_transaction
from control_plane.errors import NotFound
from control_plane.eventlog.store import append, us_to_dt
from control_plane.ids import new_id, new_secret, token_hash
from control_plane.scheduling.scheduler import SchedulerContext, schedule_pending
from control_plane.units.queue import current_mode
from control_plane.units.rows import dumps, load_node
from shared.enums import NodeHealth, WorkUnitStatus
from shared.events import (
    EventType,
    NewEvent,
    NodeDrained,
    NodeHealthChanged,
    NodeRegistered,
    WorkUnitLeasesRenewed,
)
from shared.wire import HeartbeatReply, HeartbeatRequest, NodeRegister


def register(db: Database, ctx: SchedulerContext, body: NodeRegister) -> tuple[str, str]:
    """Register a node (or re-register it with a fresh token); returns (node_id, token)."""
    node_id = body.node_id or new_id("node")
    token = new_secret("kn")
    kinds = ",".join(sorted({k.value for k in body.supported_kinds}))
    labels = dumps(body.labels or {})
    with write_transaction(db) as uow:
        existing = load_node(uow.conn, node_id)
        values = {
            "token_hash": token_hash(token),
            "region": body.region,
            "supported_kinds": kinds,
            "max_concurrency": body.max_concurrency,
            "labels": labels,
            "last_heartbeat_us": uow.now_us,
        }
        events = [
            NewEvent(
                event_id=new_id("evt"),
                type=EventType.NODE_REGISTERED,
                stream_id=node_id,
                payload=NodeRegistered(
                    node_id=node_id,
                    region=body.region,
                    supported_kinds=sorted(set(body.supported_kinds)),
                    max_concurrency=body.max_concurrency,
                    labels=body.labels or {},
                    restart=existing is not None,
                ),
            )
        ]
        if existing is None:
            uow.conn.execute(
                nodes.insert().values(
                    node_id=node_id,
                    registered_at_us=uow.now_us,
                    health=NodeHealth.HEALTHY.value,
                    **values,
                )
            )
        else:
            uow.conn.execute(
                update(nodes)
                .where(nodes.c.node_id == node_id)
                .values(health=NodeHealth.HEALTHY.value, **values)
            )
            if existing.health != NodeHealth.HEALTHY.value:
                events.append(_health_event(node_id, existing.health, "registered"))
        append(uow, events)
        schedule_pending(uow, ctx)
    return node_id, token


def _health_event(node_id: str, old: str, reason: str, new: str = "healthy") -> NewEvent:
    return NewEvent(
        event_id=new_id("evt"),
        type=EventType.NODE_HEALTH_CHANGED,
        stream_id=node_id,
        payload=NodeHealthChanged.model_validate(
            {"node_id": node_id, "from": old, "to": new, "reason": reason}
        ),
    )


def heartbeat(db: Database, node_id: str, body: HeartbeatRequest, lease_s: float) -> HeartbeatReply:
    """Mark the node alive, renew the leases of the units it still holds, and tell it which
    of the units it reports running are no longer its (``revoked``)."""
    running = list(dict.fromkeys(body.running))
    with write_transaction(db) as uow:
        conn = uow.conn
        node = load_node(conn, node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        conn.execute(
            update(nodes)
            .where(nodes.c.node_id == node_id)
            .values(
                last_heartbeat_us=uow.now_us,
                load=body.load,
                health=NodeHealth.HEALTHY.value,
            )
        )
        events: list[NewEvent] = []
        if node.health != NodeHealth.HEALTHY.value:
            events.append(_health_event(node_id, node.health, "heartbeat received"))
        held: list[str] = []
        if running:
            held = [
                r.id
                for r in conn.execute(
                    select(work_units.c.id).where(
                        work_units.c.id.in_(running),
                        work_units.c.node_id == node_id,
                        work_units.c.status == WorkUnitStatus.CLAIMED.value,
                    )
                )
            ]
        held_set = set(held)
        renewed = [u for u in running if u in held_set]
        revoked = [u for u in running if u not in held_set]
        if renewed:
            lease_us = uow.now_us + int(lease_s * 1_000_000)
            conn.execute(
                update(work_units)
                .where(
                    work_units.c.id.in_(renewed),
                    work_units.c.node_id == node_id,
                    work_units.c.status == WorkUnitStatus.CLAIMED.value,
                )
                .values(lease_expires_us=lease_us)
            )
            events.append(
                NewEvent(
                    event_id=new_id("evt"),
                    type=EventType.WORKUNIT_LEASES_RENEWED,
                    stream_id=node_id,
                    payload=WorkUnitLeasesRenewed(
                        node_id=node_id,
                        work_unit_ids=renewed,
                        lease_expires_at=us_to_dt(lease_us),
                    ),
                )
            )
        append(uow, events)
        mode = current_mode(conn)
    return HeartbeatReply(capacity_mode=mode, renewed=renewed, revoked=revoked)


def drain(db: Database, node_id: str) -> None:
    """No new placements on the node; offers not yet claimed are withdrawn by the sweep."""
    with write_transaction(db) as uow:
        node = load_node(uow.conn, node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        if node.drained:
            return
        uow.conn.execute(update(nodes).where(nodes.c.node_id == node_id).values(drained=True))
        append(
            uow,
            [
                NewEvent(
                    event_id=new_id("evt"),
                    type=EventType.NODE_DRAINED,
                    stream_id=node_id,
                    payload=NodeDrained(node_id=node_id),
                )
            ],
        )
