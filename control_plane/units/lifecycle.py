"""The work unit's state machine: the only writer of ``work_units`` (status, node, attempt,
claim token, lease, result, error, offers), ``offers``, ``claims``, ``queue_depth`` and the
node slot counter ``nodes.running``.

Commands decide (read the unit, check the claim token, pick the placement) and then call one
edge; each edge writes every table it moves, appends its event and names its wake-up topics,
inside the caller's transaction (it never commits)::

               enqueue           schedule                claim               complete
    (submit) ────────► queued ───────────► scheduled ─────────► claimed ─────────► completed
                        ▲  ▲   unschedule      │                 │  │
                        │  └───────────────────┘                 │  └─ fail / expire, ──► failed
                        │                                        │     no attempt left
                        └──── fail / expire, attempt + 1 ────────┘
    cancel: queued | scheduled | claimed ──► cancelled     renew_leases: claimed ──► claimed

    edge          work_units                         other tables            event
    enqueue       insert (queued, attempt 1)         depth +1                workunit.submitted
    schedule      scheduled, node, offered_to        offers +, running +1,   workunit.scheduled
                                                     depth -1, tenant turn
    claim         claimed, node, token, lease        claims +, offers -,     workunit.claimed
                                                     running moved to a
                                                     runner-up that won
    unschedule    queued, node cleared (same         offers -, running -1,   workunit.unscheduled
                  attempt)                           depth +1
    renew_leases  lease                                                      workunit.leases.renewed
    complete      completed, result, lease cleared   running -1              workunit.completed
    fail, expire  queued at attempt + 1 (node        running -1, offers -,   workunit.failed,
                  cleared) or failed; error, lease   depth +1 if requeued    workunit.lease_expired
                  cleared
    cancel        cancelled                          queued: depth -1;       workunit.cancelled
                                                     scheduled: running -1,
                                                     offers -; claimed:
                                                     running -1

Invariants every edge keeps (``tests/commands/test_lifecycle.py`` recounts them after each):
``nodes.running`` is the node's scheduled plus claimed units; ``queue_depth.queued`` per
(priority, tenant, kind, region) is the queued units; offers exist only for scheduled units at
their current attempt; ``claims`` has one row per claimed attempt (its primary key refuses a
second). Statements are built once with bind parameters and run set-wise: an edge costs the
same few statements for one unit or a batch.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Row, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from control_plane.db.tables import claims, nodes, offers, queue_depth, tenants, work_units
from control_plane.db.uow import UnitOfWork
from control_plane.errors import already_claimed
from control_plane.eventlog.emit import emit_all, event
from control_plane.eventlog.store import us_to_dt
from control_plane.scheduling.placement import Placement, UnitView
from control_plane.units.rows import dumps
from shared.enums import WorkUnitStatus
from shared.events import (
    WorkUnitCancelled,
    WorkUnitClaimed,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitLeaseExpired,
    WorkUnitLeasesRenewed,
    WorkUnitScheduled,
    WorkUnitSubmitted,
    WorkUnitUnscheduled,
)
from shared.wire import WorkUnitSubmit

_QUEUED = WorkUnitStatus.QUEUED.value
_SCHEDULED = WorkUnitStatus.SCHEDULED.value
_CLAIMED = WorkUnitStatus.CLAIMED.value

# --------------------------------------------------------------------------- counters

QueueKey = tuple[int, str, str, str]  # priority, tenant_id, kind, region ('' = anywhere)


def queue_key(priority: int, tenant_id: str, kind: str, region: str | None) -> QueueKey:
    """The ``queue_depth`` row a queued unit is counted in."""
    return (priority, tenant_id, kind, region or "")


def _row_key(row: Any) -> QueueKey:
    return queue_key(row.priority, row.tenant_id, row.kind, row.region)


def _upsert(ins: Any) -> Any:
    return ins.on_conflict_do_update(
        index_elements=["priority", "tenant_id", "kind", "region"],
        set_={"queued": queue_depth.c.queued + ins.excluded.queued},
    )


# built once: statement construction costs more than running them on the hot path
_DEPTH_PG = _upsert(pg_insert(queue_depth))
_DEPTH_SQLITE = _upsert(sqlite_insert(queue_depth))
_ADD_RUNNING = (
    update(nodes)
    .where(nodes.c.node_id == bindparam("b_node"))
    .values(running=nodes.c.running + bindparam("b_n"))
)


def _adjust_depth(uow: UnitOfWork, deltas: Iterable[tuple[QueueKey, int]]) -> None:
    """Add each delta to its queue's count (creating the row when needed), in one statement."""
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
    uow.conn.execute(_DEPTH_PG if uow.is_postgres else _DEPTH_SQLITE, rows)
    uow.wake("queue")


def _add_running(uow: UnitOfWork, deltas: Mapping[str, int]) -> None:
    """Move node slot counters, one statement for every node."""
    params = [{"b_node": n, "b_n": d} for n, d in sorted(deltas.items()) if d]
    if params:
        uow.conn.execute(_ADD_RUNNING, params)


# --------------------------------------------------------------------------- enqueue


class NewUnit(Protocol):
    """What ``enqueue`` needs of a unit the submit command admitted."""

    @property
    def id(self) -> str: ...
    @property
    def item(self) -> WorkUnitSubmit: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def request_hash(self) -> str: ...
    @property
    def est_cost_micros(self) -> int: ...


_INSERT_UNITS = work_units.insert()


def enqueue(uow: UnitOfWork, tenant_id: str, units: Sequence[NewUnit]) -> None:
    """New units enter the queue at attempt 1: ``workunit.submitted`` (its seq orders the
    queue), the rows, and the queue depth."""
    if not units:
        return
    stored = emit_all(
        uow,
        [
            event(
                WorkUnitSubmitted(
                    kind=u.item.kind,
                    execution_session_id=u.item.execution_session_id,
                    priority=u.item.priority,
                    region=u.item.region,
                    payload=u.item.payload,
                    max_attempts=u.item.max_attempts,
                    idempotency_key=u.idempotency_key,
                ),
                event_id=f"{u.id}/submitted",
                tenant_id=tenant_id,
                stream_id=u.id,
                correlation_id=u.item.execution_session_id,
            )
            for u in units
        ],
    )
    uow.conn.execute(
        _INSERT_UNITS,
        [
            {
                "id": u.id,
                "tenant_id": tenant_id,
                "kind": u.item.kind.value,
                "execution_session_id": u.item.execution_session_id,
                "priority": u.item.priority.level,
                "region": u.item.region,
                "payload": dumps(u.item.payload),
                "status": _QUEUED,
                "attempt": 1,
                "max_attempts": u.item.max_attempts,
                "created_at_us": uow.now_us,
                "updated_at_us": uow.now_us,
                "submit_seq": ev.seq,
                "idempotency_key": u.idempotency_key,
                "request_hash": u.request_hash,
                "est_cost_micros": u.est_cost_micros,
            }
            for u, ev in zip(units, stored, strict=True)
        ],
    )
    _adjust_depth(
        uow,
        (
            (queue_key(u.item.priority.level, tenant_id, u.item.kind.value, u.item.region), 1)
            for u in units
        ),
    )


# --------------------------------------------------------------------------- schedule

_SET_SCHEDULED = (
    update(work_units)
    .where(work_units.c.id == bindparam("b_id"), work_units.c.status == _QUEUED)
    .values(
        status=_SCHEDULED,
        node_id=bindparam("b_node"),
        offered_to=bindparam("b_offered"),
        updated_at_us=bindparam("b_now"),
    )
)
_INSERT_OFFERS = offers.insert()
_SET_TURN = (
    update(tenants)
    .where(tenants.c.tenant_id == bindparam("b_tenant"))
    .values(last_placed_seq=bindparam("b_seq"))
)


def schedule(
    uow: UnitOfWork,
    placements: Sequence[Placement],
    units: Mapping[str, UnitView],
    attempts: Mapping[str, int],
) -> None:
    """Apply a placement pass: each placed unit becomes ``scheduled`` on its node with offers
    to every node of ``offered_to``; the chosen node's slot is taken, the queue count drops,
    and each tenant's turn moves to its last placement."""
    if not placements:
        return
    conn = uow.conn
    conn.execute(
        _SET_SCHEDULED,
        [
            {
                "b_id": p.unit_id,
                "b_node": p.node_id,
                "b_offered": dumps(list(p.offered_to)),
                "b_now": uow.now_us,
            }
            for p in placements
        ],
    )
    _add_running(uow, Counter(p.node_id for p in placements))
    _adjust_depth(uow, ((_row_key(units[p.unit_id]), -1) for p in placements))
    stored = emit_all(
        uow,
        [
            event(
                WorkUnitScheduled(
                    node_id=p.node_id,
                    offered_to=list(p.offered_to),
                    attempt=attempts[p.unit_id],
                    decision=p.decision,
                ),
                tenant_id=units[p.unit_id].tenant_id,
                stream_id=p.unit_id,
                correlation_id=units[p.unit_id].execution_session_id,
            )
            for p in placements
        ],
    )
    conn.execute(
        _INSERT_OFFERS,
        [
            {
                "node_id": node,
                "work_unit_id": p.unit_id,
                "attempt": attempts[p.unit_id],
                "offered_seq": ev.seq,
            }
            for p, ev in zip(placements, stored, strict=True)
            for node in p.offered_to
        ],
    )
    last_by_tenant: dict[str, int] = {}
    for p, ev in zip(placements, stored, strict=True):
        last_by_tenant[units[p.unit_id].tenant_id] = ev.seq
    conn.execute(
        _SET_TURN,
        [{"b_tenant": t, "b_seq": q} for t, q in sorted(last_by_tenant.items())],
    )
    uow.wake(*{f"node:{node}" for p in placements for node in p.offered_to})
    uow.wake(*{f"unit:{p.unit_id}" for p in placements})


# --------------------------------------------------------------------------- claim


def _claim_token(unit_id: str, attempt: int) -> str:
    return f"{unit_id}.{attempt}.{os.urandom(12).hex()}"


def token_attempt(token: str) -> int | None:
    """The attempt a claim token was issued for (``None`` if it is not one of ours)."""
    parts = token.rsplit(".", 2)
    if len(parts) != 3:
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``claim`` gave the node: a token per unit and the lease they share."""

    tokens: dict[str, str]
    lease_expires_us: int


_SET_CLAIMED = (
    update(work_units)
    .where(
        work_units.c.id == bindparam("b_id"),
        work_units.c.status == _SCHEDULED,
        work_units.c.attempt == bindparam("b_attempt"),
    )
    .values(
        status=_CLAIMED,
        node_id=bindparam("b_node"),
        claim_token=bindparam("b_token"),
        lease_expires_us=bindparam("b_lease"),
        updated_at_us=bindparam("b_now"),
    )
)
_INSERT_CLAIMS = claims.insert()
_DELETE_OFFERS = delete(offers).where(offers.c.work_unit_id.in_(bindparam("b_ids", expanding=True)))


def claim(uow: UnitOfWork, rows: Sequence[Row[Any]], node_id: str, lease_s: float) -> Grant:
    """Grant ``node_id`` the claims of scheduled units, set-wise (the caller checked that
    they were offered to it and that it has a free slot for each it was not placed on).

    The conditional update, the ``claims`` primary key and the event ids derived from
    (unit, attempt) each refuse a second claim of the same attempt (409 ``already_claimed``).
    A runner-up that wins takes the slot from the node the unit was placed on."""
    conn = uow.conn
    lease_us = uow.now_us + int(lease_s * 1_000_000)
    tokens = {row.id: _claim_token(row.id, row.attempt) for row in rows}
    result = conn.execute(
        _SET_CLAIMED,
        [
            {
                "b_id": row.id,
                "b_attempt": row.attempt,
                "b_node": node_id,
                "b_token": tokens[row.id],
                "b_lease": lease_us,
                "b_now": uow.now_us,
            }
            for row in rows
        ],
    )
    if result.rowcount != len(rows):
        raise already_claimed(rows[0].id, rows[0].attempt)
    conn.execute(
        _INSERT_CLAIMS,
        [
            {
                "work_unit_id": row.id,
                "attempt": row.attempt,
                "node_id": node_id,
                "claim_token": tokens[row.id],
                "claimed_at_us": uow.now_us,
            }
            for row in rows
        ],
    )
    conn.execute(_DELETE_OFFERS, {"b_ids": [row.id for row in rows]})
    moved: dict[str, int] = {}
    for row in rows:
        if row.node_id != node_id:
            moved[row.node_id] = moved.get(row.node_id, 0) - 1
            moved[node_id] = moved.get(node_id, 0) + 1
    if moved:
        _add_running(uow, moved)
        uow.wake(*(f"node:{n}" for n in moved))
    expires = us_to_dt(lease_us)
    emit_all(
        uow,
        [
            event(
                WorkUnitClaimed(node_id=node_id, attempt=row.attempt, lease_expires_at=expires),
                event_id=f"{row.id}/{row.attempt}/claimed",
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
            )
            for row in rows
        ],
    )
    uow.wake(*(f"unit:{row.id}" for row in rows))
    return Grant(tokens, lease_us)


# --------------------------------------------------------------------------- unschedule

_SET_UNSCHEDULED = (
    update(work_units)
    .where(work_units.c.id == bindparam("b_id"))
    .values(status=_QUEUED, node_id=None, updated_at_us=bindparam("b_now"))
)


def unschedule(uow: UnitOfWork, withdrawn: Sequence[tuple[Row[Any], str]]) -> None:
    """Withdraw the offers of scheduled units (each with the reason): they are queued again
    at the same attempt, and the nodes they were placed on get their slots back."""
    if not withdrawn:
        return
    conn = uow.conn
    freed = Counter(row.node_id for row, _ in withdrawn)
    _add_running(uow, {n: -c for n, c in freed.items()})
    conn.execute(_DELETE_OFFERS, {"b_ids": [row.id for row, _ in withdrawn]})
    conn.execute(_SET_UNSCHEDULED, [{"b_id": row.id, "b_now": uow.now_us} for row, _ in withdrawn])
    _adjust_depth(uow, ((_row_key(row), 1) for row, _ in withdrawn))
    emit_all(
        uow,
        [
            event(
                WorkUnitUnscheduled(node_id=row.node_id, attempt=row.attempt, reason=reason),
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
            )
            for row, reason in withdrawn
        ],
    )
    uow.wake(*(f"unit:{row.id}" for row, _ in withdrawn))


# --------------------------------------------------------------------------- renew_leases

_HELD = select(work_units.c.id).where(
    work_units.c.id.in_(bindparam("b_ids", expanding=True)),
    work_units.c.node_id == bindparam("b_node"),
    work_units.c.status == _CLAIMED,
)
_RENEW = (
    update(work_units)
    .where(
        work_units.c.id.in_(bindparam("b_ids", expanding=True)),
        work_units.c.node_id == bindparam("b_node"),
        work_units.c.status == _CLAIMED,
    )
    .values(lease_expires_us=bindparam("b_lease"))
)


def renew_leases(
    uow: UnitOfWork, node_id: str, unit_ids: Sequence[str], lease_s: float
) -> list[str]:
    """Renew the leases of the units among ``unit_ids`` that ``node_id`` still holds (a
    heartbeat); returns them, in the order given. The others are no longer the node's."""
    if not unit_ids:
        return []
    conn = uow.conn
    held = {r.id for r in conn.execute(_HELD, {"b_ids": list(unit_ids), "b_node": node_id})}
    renewed = [u for u in unit_ids if u in held]
    if renewed:
        lease_us = uow.now_us + int(lease_s * 1_000_000)
        conn.execute(_RENEW, {"b_ids": renewed, "b_node": node_id, "b_lease": lease_us})
        emit_all(
            uow,
            [
                event(
                    WorkUnitLeasesRenewed(
                        node_id=node_id, work_unit_ids=renewed, lease_expires_at=us_to_dt(lease_us)
                    ),
                    stream_id=node_id,
                )
            ],
        )
    return renewed


# --------------------------------------------------------------------------- finish

_SET_COMPLETED = (
    update(work_units)
    .where(work_units.c.id == bindparam("b_id"))
    .values(
        status=WorkUnitStatus.COMPLETED.value,
        result=bindparam("b_result"),
        lease_expires_us=None,
        updated_at_us=bindparam("b_now"),
    )
)


def complete(
    uow: UnitOfWork, node_id: str, done: Sequence[tuple[Row[Any], WorkUnitCompleted]]
) -> None:
    """Accepted completions of units ``node_id`` holds (the caller checked each claim token):
    ``completed`` with the payload's result, and the node's slots freed."""
    if not done:
        return
    uow.conn.execute(
        _SET_COMPLETED,
        [
            {"b_id": row.id, "b_result": dumps(payload.result), "b_now": uow.now_us}
            for row, payload in done
        ],
    )
    _add_running(uow, {node_id: -len(done)})
    emit_all(
        uow,
        [
            event(
                payload,
                event_id=f"{row.id}/completed",
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
            )
            for row, payload in done
        ],
    )
    uow.wake(f"node:{node_id}", *(f"unit:{row.id}" for row, _ in done))


_SET_ENDED = (
    update(work_units)
    .where(work_units.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempt=bindparam("b_attempt"),
        node_id=bindparam("b_node"),
        error=bindparam("b_error"),
        lease_expires_us=None,
        updated_at_us=bindparam("b_now"),
    )
)

_Ended = tuple[Row[Any], WorkUnitFailed | WorkUnitLeaseExpired, Any, str]


def fail(uow: UnitOfWork, row: Row[Any], payload: WorkUnitFailed) -> None:
    """A claimed unit's attempt failed: queued again at ``attempt + 1`` when
    ``payload.requeued``, else terminally ``failed``; the node's slot is freed."""
    _end_attempts(uow, [(row, payload, payload.error, f"{row.id}/{row.attempt}/failed")])


def expire(uow: UnitOfWork, rows: Sequence[Row[Any]]) -> None:
    """Claimed units whose lease ran out: requeued at ``attempt + 1`` while attempts remain,
    else terminally ``failed``; their nodes' slots are freed."""
    _end_attempts(
        uow,
        [
            (
                row,
                WorkUnitLeaseExpired(
                    node_id=row.node_id,
                    attempt=row.attempt,
                    requeued=row.attempt < row.max_attempts,
                ),
                {"reason": "lease_expired", "attempt": row.attempt, "node_id": row.node_id},
                f"{row.id}/{row.attempt}/lease_expired",
            )
            for row in rows
        ],
    )


def _end_attempts(uow: UnitOfWork, ended: Sequence[_Ended]) -> None:
    if not ended:
        return
    conn = uow.conn
    freed = Counter(row.node_id for row, _, _, _ in ended if row.node_id)
    _add_running(uow, {n: -c for n, c in freed.items()})
    _adjust_depth(uow, ((_row_key(row), 1) for row, payload, _, _ in ended if payload.requeued))
    conn.execute(
        _SET_ENDED,
        [
            {
                "b_id": row.id,
                "b_status": _QUEUED if payload.requeued else WorkUnitStatus.FAILED.value,
                "b_attempt": row.attempt + 1 if payload.requeued else row.attempt,
                "b_node": None if payload.requeued else row.node_id,
                "b_error": dumps(error),
                "b_now": uow.now_us,
            }
            for row, payload, error, _ in ended
        ],
    )
    conn.execute(_DELETE_OFFERS, {"b_ids": [row.id for row, _, _, _ in ended]})
    emit_all(
        uow,
        [
            event(
                payload,
                event_id=event_id,
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
            )
            for row, payload, _, event_id in ended
        ],
    )
    uow.wake(*(f"unit:{row.id}" for row, _, _, _ in ended))
    uow.wake(*(f"node:{n}" for n in freed))


# --------------------------------------------------------------------------- cancel

_SET_CANCELLED = (
    update(work_units)
    .where(work_units.c.id == bindparam("b_id"))
    .values(status=WorkUnitStatus.CANCELLED.value, updated_at_us=bindparam("b_now"))
)


def cancel(uow: UnitOfWork, row: Row[Any], by: str) -> None:
    """Withdraw a unit that is not terminal: a queued one leaves its queue count; a scheduled
    one frees its node's slot and loses its offers; a claimed one frees its node's slot (the
    node is told ``revoked`` at its next heartbeat)."""
    status = WorkUnitStatus(row.status)
    assert not status.terminal, f"cancel of a {status.value} unit"
    if status is WorkUnitStatus.QUEUED:
        _adjust_depth(uow, [(_row_key(row), -1)])
    elif row.node_id:
        _add_running(uow, {row.node_id: -1})
        if status is WorkUnitStatus.SCHEDULED:
            uow.conn.execute(_DELETE_OFFERS, {"b_ids": [row.id]})
        uow.wake(f"node:{row.node_id}")
    uow.conn.execute(_SET_CANCELLED, {"b_id": row.id, "b_now": uow.now_us})
    emit_all(
        uow,
        [
            event(
                WorkUnitCancelled(attempt=row.attempt, node_id=row.node_id, by=by),
                event_id=f"{row.id}/cancelled",
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
            )
        ],
    )
    uow.wake(f"unit:{row.id}")


__all__ = [
    "Grant",
    "NewUnit",
    "QueueKey",
    "cancel",
    "claim",
    "complete",
    "enqueue",
    "expire",
    "fail",
    "queue_key",
    "renew_leases",
    "schedule",
    "token_attempt",
    "unschedule",
]
