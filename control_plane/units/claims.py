"""Claims from the node's side: claim one offered unit, or poll (look at the node's offers,
and with ``claim`` take them in the same transaction). The database arbitrates every race:
``lifecycle.claim`` is a conditional ``UPDATE … WHERE status = 'scheduled' AND attempt = :a``
plus a row in ``claims`` whose primary key is ``(work_unit_id, attempt)`` and an event whose
id is derived from the same pair, so a second claim of an attempt cannot be stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Row, and_, bindparam, select

from control_plane.db.engine import Database
from control_plane.db.tables import claims, offers, queue_depth, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.errors import NotFound, already_claimed, not_claimable
from control_plane.eventlog.store import us_to_dt
from control_plane.fleet.queries import load_node
from control_plane.scheduling.scheduler import SchedulerContext, schedule_pending
from control_plane.units import lifecycle
from control_plane.units.queries import load_unit
from control_plane.units.rows import WORK_UNIT_COLUMNS, to_work_unit
from shared.enums import WorkUnitStatus
from shared.wire import ClaimReply, WorkUnit


def _grant(
    uow: UnitOfWork, rows: Sequence[Row[Any]], node_id: str, lease_s: float
) -> list[ClaimReply]:
    """Claim the units for ``node_id`` (the caller checked eligibility) and build the replies."""
    grant = lifecycle.claim(uow, rows, node_id, lease_s)
    expires = us_to_dt(grant.lease_expires_us)
    now = us_to_dt(uow.now_us)
    replies = []
    for row in rows:
        unit = to_work_unit(row)
        unit.status = WorkUnitStatus.CLAIMED
        unit.node_id = node_id
        unit.updated_at = now
        replies.append(
            ClaimReply.model_construct(
                claim_token=grant.tokens[row.id],
                attempt=row.attempt,
                lease_expires_at=expires,
                work_unit=unit,
            )
        )
    return replies


def _existing_claim(row: Row[Any]) -> ClaimReply:
    """The node asks again for the claim it already holds (a retried request): same reply."""
    assert row.lease_expires_us is not None
    return ClaimReply.model_construct(
        claim_token=row.claim_token,
        attempt=row.attempt,
        lease_expires_at=us_to_dt(row.lease_expires_us),
        work_unit=to_work_unit(row),
    )


def claim(db: Database, node_id: str, unit_id: str, attempt: int, lease_s: float) -> ClaimReply:
    """Claim ``attempt`` of a unit offered to ``node_id`` (404, 409 ``not_claimable`` or
    ``already_claimed``); a retry of a claim the node holds gets the same reply."""
    with write_transaction(db) as uow:
        row = load_unit(uow.conn, unit_id)
        if row is None:
            raise NotFound(f"work unit {unit_id} not found")
        offered = orjson.loads(row.offered_to) if row.offered_to else []
        status = WorkUnitStatus(row.status)
        if status is WorkUnitStatus.CLAIMED and row.node_id == node_id and row.attempt == attempt:
            return _existing_claim(row)
        if row.attempt != attempt:
            if attempt < row.attempt and _held_before(uow, unit_id, attempt) is not None:
                raise already_claimed(unit_id, attempt)
            raise not_claimable(unit_id, f"attempt {attempt} is not the current attempt")
        if node_id not in offered:
            raise not_claimable(unit_id, "it was not offered to this node")
        if status is not WorkUnitStatus.SCHEDULED:
            if status is WorkUnitStatus.QUEUED or status is WorkUnitStatus.CANCELLED:
                raise not_claimable(unit_id, f"it is {status.value}")
            raise already_claimed(unit_id, attempt)
        if row.node_id != node_id:
            node = load_node(uow.conn, node_id)
            if node is None or node.running >= node.max_concurrency:
                raise not_claimable(unit_id, "this node has no free slot")
        return _grant(uow, [row], node_id, lease_s)[0]


_HELD_BEFORE = select(claims.c.node_id).where(
    claims.c.work_unit_id == bindparam("b_id"), claims.c.attempt == bindparam("b_attempt")
)


def _held_before(uow: UnitOfWork, unit_id: str, attempt: int) -> str | None:
    return uow.conn.execute(_HELD_BEFORE, {"b_id": unit_id, "b_attempt": attempt}).scalar()


_OFFERED = (
    select(*WORK_UNIT_COLUMNS, work_units.c.offered_to, work_units.c.tenant_id)
    .select_from(
        offers.join(
            work_units,
            and_(
                work_units.c.id == offers.c.work_unit_id,
                work_units.c.attempt == offers.c.attempt,
            ),
        )
    )
    .where(
        offers.c.node_id == bindparam("b_node"),
        work_units.c.status == WorkUnitStatus.SCHEDULED.value,
    )
    .order_by(offers.c.offered_seq)
    .limit(bindparam("b_limit"))
)


def offered_units(conn: Connection, node_id: str, limit: int) -> list[Row[Any]]:
    """The scheduled units offered to ``node_id``, oldest offer first."""
    return list(conn.execute(_OFFERED, {"b_node": node_id, "b_limit": limit}))


_ANY_QUEUED = select(queue_depth.c.queued).where(queue_depth.c.queued > 0).limit(1)


def poll_once(
    db: Database,
    ctx: SchedulerContext,
    node_id: str,
    max_units: int,
    do_claim: bool,
    lease_s: float,
    schedule: bool,
) -> tuple[list[WorkUnit], list[ClaimReply]]:
    """One look at the node's offers; with ``do_claim`` claims them in the same transaction.
    An idle look (no offer for the node, nothing queued) only reads: no write lock."""
    with db.engine.connect() as conn:
        rows = offered_units(conn, node_id, max_units)
        if not do_claim and not schedule:
            return [to_work_unit(r) for r in rows], []
        if not rows and not (schedule and conn.execute(_ANY_QUEUED).first() is not None):
            return [], []
    with write_transaction(db) as uow:
        if schedule:
            schedule_pending(uow, ctx)
        rows = offered_units(uow.conn, node_id, max_units)
        if not do_claim:
            return [to_work_unit(r) for r in rows], []
        if not rows:
            return [], []
        node = load_node(uow.conn, node_id)
        if node is None:
            return [], []
        free = node.max_concurrency - node.running
        chosen = []
        for r in rows:
            if r.node_id != node_id:
                if free <= 0:
                    continue
                free -= 1
            chosen.append(r)
        return [], _grant(uow, chosen, node_id, lease_s) if chosen else []
