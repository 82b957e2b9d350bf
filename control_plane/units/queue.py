"""Queue-depth bookkeeping: queued units counted by (priority, tenant, kind, region).

Kept in the same transaction as every status change into or out of ``queued``, so placement
can find the non-empty queues without scanning the queue, and ``GET /v1/capacity`` and the
autoscaler read the depth by priority in one small query.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from control_plane.db.tables import capacity_state, queue_depth
from control_plane.db.uow import UnitOfWork
from shared.enums import CapacityMode

QueueKey = tuple[int, str, str, str]  # priority, tenant_id, kind, region ('' = anywhere)


def queue_key(priority: int, tenant_id: str, kind: str, region: str | None) -> QueueKey:
    return (priority, tenant_id, kind, region or "")


def adjust_depth(uow: UnitOfWork, deltas: Iterable[tuple[QueueKey, int]]) -> None:
    """Add each delta to its queue's count (creating the row when needed)."""
    totals: Counter[QueueKey] = Counter()
    for key, delta in deltas:
        totals[key] += delta
    rows = [
        {"priority": k[0], "tenant_id": k[1], "kind": k[2], "region": k[3], "queued": d}
        for k, d in sorted(totals.items())
        if d != 0
    ]
    if not rows:
        return
    uow.conn.execute(_UPSERT_PG if uow.is_postgres else _UPSERT_SQLITE, rows)
    uow.wake("queue")


def _upsert(ins: Any) -> Any:
    return ins.on_conflict_do_update(
        index_elements=["priority", "tenant_id", "kind", "region"],
        set_={"queued": queue_depth.c.queued + ins.excluded.queued},
    )


# built once: statement construction costs more than running them on the hot path
_UPSERT_PG = _upsert(pg_insert(queue_depth))
_UPSERT_SQLITE = _upsert(sqlite_insert(queue_depth))
_MODE = select(capacity_state.c.mode).where(capacity_state.c.id == 1)


def depth_by_priority(conn: Connection) -> dict[str, int]:
    """``{"p0": n, …, "p9": n}`` of queued units."""
    out = {f"p{i}": 0 for i in range(10)}
    rows = conn.execute(
        select(queue_depth.c.priority, func.sum(queue_depth.c.queued)).group_by(
            queue_depth.c.priority
        )
    )
    for priority, total in rows:
        out[f"p{priority}"] = int(total or 0)
    return out


def current_mode(conn: Connection) -> CapacityMode:
    mode = conn.execute(_MODE).scalar()
    return CapacityMode(mode) if mode else CapacityMode.OPEN
