"""Node commands: register (or re-register), heartbeat (lease renewal, revocations), drain."""

from __future__ import annotations

from sqlalchemy import update

from control_plane.capacity.mode import current_mode
from control_plane.db.engine import Database
from control_plane.db.tables import nodes
from control_plane.db.uow import write_transaction
from control_plane.errors import NotFound
from control_plane.eventlog.emit import emit, emit_all, event
from control_plane.fleet import health
from control_plane.fleet.queries import load_node, to_node
from control_plane.ids import new_id, new_secret, token_hash
from control_plane.scheduling.scheduler import SchedulerContext, schedule_pending
from control_plane.units import lifecycle
from control_plane.units.rows import dumps
from shared.enums import NodeHealth
from shared.events import NodeDrained, NodeRegistered
from shared.wire import HeartbeatReply, HeartbeatRequest, Node, NodeRegister


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
            event(
                NodeRegistered(
                    node_id=node_id,
                    region=body.region,
                    supported_kinds=sorted(set(body.supported_kinds)),
                    max_concurrency=body.max_concurrency,
                    labels=body.labels or {},
                    restart=existing is not None,
                ),
                stream_id=node_id,
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
                events.append(health.changed(node_id, existing.health, "healthy", "registered"))
        emit_all(uow, events)
        schedule_pending(uow, ctx)
    return node_id, token


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
        if node.health != NodeHealth.HEALTHY.value:
            emit_all(uow, [health.changed(node_id, node.health, "healthy", "heartbeat received")])
        renewed = lifecycle.renew_leases(uow, node_id, running, lease_s)
        held = set(renewed)
        revoked = [u for u in running if u not in held]
        mode = current_mode(conn)
    return HeartbeatReply(capacity_mode=mode, renewed=renewed, revoked=revoked)


def drain(db: Database, node_id: str) -> Node:
    """No new placements on the node; offers not yet claimed are withdrawn by the sweep.
    Returns the node as drained."""
    with write_transaction(db) as uow:
        node = load_node(uow.conn, node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        if node.drained:
            return to_node(node)
        uow.conn.execute(update(nodes).where(nodes.c.node_id == node_id).values(drained=True))
        emit(uow, NodeDrained(node_id=node_id), stream_id=node_id)
    drained = to_node(node)
    drained.drained = True  # the row as this transaction left it
    return drained
