"""Node reads: the registry as the API shows it, and the row the node commands load.
``read_*`` are the API's queries (each opens its own read connection)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, select

from control_plane.db.engine import Database
from control_plane.db.tables import nodes
from control_plane.errors import NotFound
from control_plane.eventlog.store import us_to_dt
from shared.enums import NodeHealth, WorkUnitKind
from shared.wire import Node

_NODE = select(nodes).where(nodes.c.node_id == bindparam("b_id"))


def load_node(conn: Connection, node_id: str) -> Row[Any] | None:
    """The node's row, or ``None``."""
    return conn.execute(_NODE, {"b_id": node_id}).first()


def to_node(row: Row[Any]) -> Node:
    """The wire model of a ``nodes`` row."""
    return Node.model_construct(
        node_id=row.node_id,
        region=row.region,
        supported_kinds=[WorkUnitKind(k) for k in row.supported_kinds.split(",") if k],
        max_concurrency=row.max_concurrency,
        running=row.running,
        health=NodeHealth(row.health),
        trust=round(float(row.trust), 6),
        drained=bool(row.drained),
        quarantined=bool(row.quarantined),
        labels=orjson.loads(row.labels or "{}"),
        last_heartbeat_at=(
            us_to_dt(row.last_heartbeat_us) if row.last_heartbeat_us is not None else None
        ),
    )


def get_node(conn: Connection, node_id: str) -> Node:
    """The node, or 404."""
    row = load_node(conn, node_id)
    if row is None:
        raise NotFound(f"node {node_id} not found")
    return to_node(row)


def list_nodes(conn: Connection, after_id: str | None, limit: int) -> list[Node]:
    """Nodes by id, after ``after_id`` (the pagination cursor)."""
    query = select(nodes)
    if after_id is not None:
        query = query.where(nodes.c.node_id > after_id)
    return [to_node(r) for r in conn.execute(query.order_by(nodes.c.node_id).limit(limit))]


def read_node(db: Database, node_id: str) -> Node:
    """The query behind ``GET /v1/nodes/{id}``: the node, or 404."""
    with db.engine.connect() as conn:
        return get_node(conn, node_id)


def read_nodes(db: Database, after_id: str | None, limit: int) -> list[Node]:
    """The query behind ``GET /v1/nodes``: ``list_nodes``."""
    with db.engine.connect() as conn:
        return list_nodes(conn, after_id, limit)
