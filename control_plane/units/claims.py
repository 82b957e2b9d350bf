"""Commands from the node's side: claim, poll (with or without claiming), LLM invocation
reports, complete and fail. Each is one transaction; the database arbitrates every race:

* a claim is a conditional ``UPDATE … WHERE status = 'scheduled' AND attempt = :a`` plus a row
  in ``claims`` whose primary key is ``(work_unit_id, attempt)`` and an event whose id is
  derived from the same pair, so a second claim of an attempt cannot be stored;
* a report carries the claim token; only the unit's current claim is accepted, anything else
  is ``stale_claim`` (fencing).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Row, and_, bindparam, delete, func, select, update

from control_plane.billing.prices import bill_llm_from_completion, cpu_pricing, token_pricing
from control_plane.db.engine import Database
from control_plane.db.tables import (
    claims,
    llm_invocations,
    nodes,
    offers,
    queue_depth,
    work_units,
)
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.errors import (
    Conflict,
    Forbidden,
    KrakoError,
    NotFound,
    already_claimed,
    not_claimable,
    stale_claim,
)
from control_plane.eventlog.store import append, us_to_dt
from control_plane.fleet.trust import record_outcome, record_outcomes
from control_plane.scheduling.scheduler import (
    ADD_RUNNING,
    SchedulerContext,
    defer_placement,
    schedule_pending,
)
from control_plane.units.queue import adjust_depth, queue_key
from control_plane.units.rows import (
    WORK_UNIT_COLUMNS,
    dumps,
    load_node,
    load_unit,
    to_work_unit,
)
from control_plane.units.validation import ensure_storable
from shared.enums import WorkUnitStatus
from shared.events import (
    EventType,
    LlmInvocationCompleted,
    LlmUsage,
    NewEvent,
    WorkUnitClaimed,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from shared.wire import (
    ClaimReply,
    CompleteRequest,
    FailRequest,
    LlmInvocationAccepted,
    LlmInvocationReport,
    WorkUnit,
)


def _claim_token(unit_id: str, attempt: int) -> str:
    return f"{unit_id}.{attempt}.{os.urandom(12).hex()}"


def _token_attempt(token: str) -> int | None:
    parts = token.rsplit(".", 2)
    if len(parts) != 3:
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


_SET_CLAIMED = (
    update(work_units)
    .where(
        work_units.c.id == bindparam("b_id"),
        work_units.c.status == WorkUnitStatus.SCHEDULED.value,
        work_units.c.attempt == bindparam("b_attempt"),
    )
    .values(
        status=WorkUnitStatus.CLAIMED.value,
        node_id=bindparam("b_node"),
        claim_token=bindparam("b_token"),
        lease_expires_us=bindparam("b_lease"),
        updated_at_us=bindparam("b_now"),
    )
)


def _grant(uow: UnitOfWork, row: Row[Any], node_id: str, lease_s: float) -> ClaimReply:
    """Turn a scheduled unit into a claim for ``node_id`` (the caller checked eligibility)."""
    return _grant_many(uow, [row], node_id, lease_s)[0]


def _grant_many(
    uow: UnitOfWork, rows: Sequence[Row[Any]], node_id: str, lease_s: float
) -> list[ClaimReply]:
    """Claim scheduled units for ``node_id`` set-wise (the caller checked eligibility). The
    conditional update, the ``claims`` primary key and the derived event ids each refuse a
    second claim of the same attempt."""
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
        claims.insert(),
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
            # an offered runner-up won: move the slot from the placed node to the claimer
            moved[row.node_id] = moved.get(row.node_id, 0) - 1
            moved[node_id] = moved.get(node_id, 0) + 1
    if moved:
        conn.execute(ADD_RUNNING, [{"b_node": n, "b_n": d} for n, d in sorted(moved.items()) if d])
        uow.wake(*(f"node:{n}" for n in moved))
    expires = us_to_dt(lease_us)
    append(
        uow,
        [
            NewEvent(
                event_id=f"{row.id}/{row.attempt}/claimed",
                type=EventType.WORKUNIT_CLAIMED,
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
                payload=WorkUnitClaimed(
                    node_id=node_id, attempt=row.attempt, lease_expires_at=expires
                ),
            )
            for row in rows
        ],
    )
    uow.wake(*(f"unit:{row.id}" for row in rows))
    now = us_to_dt(uow.now_us)
    replies = []
    for row in rows:
        unit = to_work_unit(row)
        unit.status = WorkUnitStatus.CLAIMED
        unit.node_id = node_id
        unit.updated_at = now
        replies.append(
            ClaimReply.model_construct(
                claim_token=tokens[row.id],
                attempt=row.attempt,
                lease_expires_at=expires,
                work_unit=unit,
            )
        )
    return replies


def _existing_claim(uow: UnitOfWork, row: Row[Any], node_id: str) -> ClaimReply:
    """The node asks again for the claim it already holds (a retried request): same reply."""
    unit = to_work_unit(row)
    assert row.lease_expires_us is not None
    return ClaimReply.model_construct(
        claim_token=row.claim_token,
        attempt=row.attempt,
        lease_expires_at=us_to_dt(row.lease_expires_us),
        work_unit=unit,
    )


def claim(db: Database, node_id: str, unit_id: str, attempt: int, lease_s: float) -> ClaimReply:
    with write_transaction(db) as uow:
        row = load_unit(uow.conn, unit_id)
        if row is None:
            raise NotFound(f"work unit {unit_id} not found")
        offered = orjson.loads(row.offered_to) if row.offered_to else []
        status = WorkUnitStatus(row.status)
        if status is WorkUnitStatus.CLAIMED and row.node_id == node_id and row.attempt == attempt:
            return _existing_claim(uow, row, node_id)
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
        return _grant(uow, row, node_id, lease_s)


def _held_before(uow: UnitOfWork, unit_id: str, attempt: int) -> str | None:
    return uow.conn.execute(
        select(claims.c.node_id).where(
            claims.c.work_unit_id == unit_id, claims.c.attempt == attempt
        )
    ).scalar()


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


def offered_units(db_conn: Any, node_id: str, limit: int) -> list[Row[Any]]:
    return list(db_conn.execute(_OFFERED, {"b_node": node_id, "b_limit": limit}))


_DELETE_OFFERS = delete(offers).where(offers.c.work_unit_id.in_(bindparam("b_ids", expanding=True)))
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
        return [], _grant_many(uow, chosen, node_id, lease_s) if chosen else []


def _current_claim(uow: UnitOfWork, unit_id: str, node_id: str, token: str) -> Row[Any]:
    """The unit, if ``token`` is its current claim held by ``node_id``; else 409/404."""
    row = load_unit(uow.conn, unit_id)
    if row is None:
        raise NotFound(f"work unit {unit_id} not found")
    if (
        row.status == WorkUnitStatus.CLAIMED.value
        and row.claim_token == token
        and row.node_id == node_id
    ):
        return row
    raise stale_claim(unit_id, _why_stale(row, node_id, token))


def _why_stale(row: Row[Any], node_id: str, token: str) -> str:
    if row.claim_token != token:
        return "the claim token is not the unit's current claim"
    if row.node_id != node_id:
        return "the unit is held by another node"
    return f"the unit is {row.status}"


def _is_repeat(row: Row[Any], node_id: str, token: str, status: WorkUnitStatus) -> bool:
    return bool(row.status == status.value and row.claim_token == token and row.node_id == node_id)


def complete(
    db: Database, ctx: SchedulerContext, node_id: str, unit_id: str, body: CompleteRequest
) -> WorkUnit:
    ensure_storable(body, "the report")
    with write_transaction(db) as uow:
        [(unit, error)] = complete_in(uow, ctx, node_id, [(unit_id, body)])
    if error is not None:
        raise error
    assert unit is not None
    return unit


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

_UNITS_IN = select(work_units).where(work_units.c.id.in_(bindparam("b_ids", expanding=True)))

ReportResult = tuple[WorkUnit | None, KrakoError | None]


def complete_in(
    uow: UnitOfWork,
    ctx: SchedulerContext,
    node_id: str,
    items: Sequence[tuple[str, CompleteRequest]],
) -> list[ReportResult]:
    """Accept completions inside the caller's transaction, set-wise: one read of the units,
    one update per table, one append for all events. Each item gets its unit (200) or its
    error (404 unknown unit, 409 ``stale_claim``); a repeat of an accepted completion is 200."""
    conn = uow.conn
    ids = sorted({unit_id for unit_id, _ in items})
    rows = {r.id: r for r in conn.execute(_UNITS_IN, {"b_ids": ids})}
    results: list[ReportResult] = []
    accepted: dict[str, tuple[Row[Any], CompleteRequest]] = {}
    for unit_id, body in items:
        row = rows.get(unit_id)
        if row is None:
            results.append((None, NotFound(f"work unit {unit_id} not found")))
        elif unit_id in accepted and accepted[unit_id][1].claim_token == body.claim_token:
            results.append((None, None))  # filled in below: same completion twice in a batch
        elif _is_repeat(row, node_id, body.claim_token, WorkUnitStatus.COMPLETED):
            results.append((to_work_unit(row), None))
        elif (
            row.status == WorkUnitStatus.CLAIMED.value
            and row.claim_token == body.claim_token
            and row.node_id == node_id
            and unit_id not in accepted
        ):
            accepted[unit_id] = (row, body)
            results.append((None, None))
        else:
            results.append((None, stale_claim(unit_id, _why_stale(row, node_id, body.claim_token))))
    if not accepted:
        return results
    pricing = cpu_pricing(conn)
    from_completion = bill_llm_from_completion(conn)
    conn.execute(
        _SET_COMPLETED,
        [
            {"b_id": uid, "b_result": dumps(body.result), "b_now": uow.now_us}
            for uid, (_, body) in accepted.items()
        ],
    )
    conn.execute(ADD_RUNNING, {"b_node": node_id, "b_n": -len(accepted)})
    append(
        uow,
        [
            NewEvent(
                event_id=f"{uid}/completed",
                type=EventType.WORKUNIT_COMPLETED,
                tenant_id=row.tenant_id,
                stream_id=uid,
                correlation_id=row.execution_session_id,
                payload=WorkUnitCompleted(
                    node_id=node_id,
                    attempt=row.attempt,
                    cpu_ms=body.cpu_ms,
                    result=body.result,
                    pricing=pricing,
                    llm_usage=_llm_usage(uow, row) if from_completion else [],
                ),
            )
            for uid, (row, body) in accepted.items()
        ],
    )
    record_outcomes(uow, node_id, EventType.WORKUNIT_COMPLETED, len(accepted))
    uow.wake(f"node:{node_id}", *(f"unit:{uid}" for uid in accepted))
    defer_placement(uow, ctx)
    done_at = us_to_dt(uow.now_us)
    finished: dict[str, WorkUnit] = {}
    for uid, (row, body) in accepted.items():
        unit = to_work_unit(row)
        unit.status = WorkUnitStatus.COMPLETED
        unit.result = body.result
        unit.updated_at = done_at
        finished[uid] = unit
    return [
        (finished[unit_id], None) if unit is None and error is None else (unit, error)
        for (unit_id, _), (unit, error) in zip(items, results, strict=True)
    ]


def _llm_usage(uow: UnitOfWork, row: Row[Any]) -> list[LlmUsage]:
    """Sum the tokens of the unit's accepted (non-stale) invocations of this attempt, by model."""
    from control_plane.db.tables import events

    totals: dict[str, list[int]] = {}
    for (payload,) in uow.conn.execute(
        select(events.c.payload).where(
            events.c.stream_id == row.id,
            events.c.type == EventType.LLM_INVOCATION_COMPLETED.value,
        )
    ):
        p = orjson.loads(payload)
        if p.get("stale_claim") or p.get("attempt") != row.attempt:
            continue
        t = totals.setdefault(p["model"], [0, 0])
        t[0] += int(p["tokens_in"])
        t[1] += int(p["tokens_out"])
    return [
        LlmUsage(
            model=model,
            tokens_in=t[0],
            tokens_out=t[1],
            pricing=token_pricing(uow.conn, model),
        )
        for model, t in sorted(totals.items())
    ]


def fail(
    db: Database, ctx: SchedulerContext, node_id: str, unit_id: str, body: FailRequest
) -> WorkUnit:
    ensure_storable(body, "the report")
    with write_transaction(db) as uow:
        return fail_in(uow, ctx, node_id, unit_id, body)


def fail_in(
    uow: UnitOfWork, ctx: SchedulerContext, node_id: str, unit_id: str, body: FailRequest
) -> WorkUnit:
    """Accept a failure inside the caller's transaction (raises 404 / 409 ``stale_claim``)."""
    row = load_unit(uow.conn, unit_id)
    if row is not None and _is_repeat(row, node_id, body.claim_token, WorkUnitStatus.FAILED):
        return to_work_unit(row)
    if row is not None and _failed_attempt_repeat(uow, row, node_id, body.claim_token):
        return to_work_unit(row)
    row = _current_claim(uow, unit_id, node_id, body.claim_token)
    requeue = body.retryable and row.attempt < row.max_attempts
    finish_attempt(
        uow,
        row,
        EventType.WORKUNIT_FAILED,
        WorkUnitFailed(
            node_id=node_id,
            attempt=row.attempt,
            error=body.error,
            retryable=body.retryable,
            requeued=requeue,
        ),
        requeue=requeue,
        error=body.error,
        event_id=f"{unit_id}/{row.attempt}/failed",
    )
    record_outcome(uow, node_id, EventType.WORKUNIT_FAILED)
    defer_placement(uow, ctx)
    done = load_unit(uow.conn, unit_id)
    assert done is not None
    return to_work_unit(done)


def _failed_attempt_repeat(uow: UnitOfWork, row: Row[Any], node_id: str, token: str) -> bool:
    """A retried ``fail`` whose first copy already requeued the unit: answer 200 again."""
    attempt = _token_attempt(token)
    if attempt is None or attempt >= row.attempt:
        return False
    held = uow.conn.execute(select(claims.c.node_id).where(claims.c.claim_token == token)).scalar()
    if held != node_id:
        return False
    from control_plane.db.tables import events

    return (
        uow.conn.execute(
            select(func.count()).where(events.c.event_id == f"{row.id}/{attempt}/failed")
        ).scalar_one()
        > 0
    )


def finish_attempt(
    uow: UnitOfWork,
    row: Row[Any],
    event_type: EventType,
    payload: Any,
    *,
    requeue: bool,
    error: Any,
    event_id: str,
) -> None:
    """End the current attempt of a claimed unit: requeue it at ``attempt + 1`` or fail it."""
    conn = uow.conn
    if row.node_id:
        conn.execute(
            update(nodes).where(nodes.c.node_id == row.node_id).values(running=nodes.c.running - 1)
        )
    values: dict[str, Any] = {
        "lease_expires_us": None,
        "updated_at_us": uow.now_us,
        "error": dumps(error),
    }
    if requeue:
        values.update(status=WorkUnitStatus.QUEUED.value, attempt=row.attempt + 1, node_id=None)
        adjust_depth(uow, [(queue_key(row.priority, row.tenant_id, row.kind, row.region), 1)])
    else:
        values.update(status=WorkUnitStatus.FAILED.value)
    conn.execute(update(work_units).where(work_units.c.id == row.id).values(**values))
    conn.execute(delete(offers).where(offers.c.work_unit_id == row.id))
    append(
        uow,
        [
            NewEvent(
                event_id=event_id,
                type=event_type,
                tenant_id=row.tenant_id,
                stream_id=row.id,
                correlation_id=row.execution_session_id,
                payload=payload,
            )
        ],
    )
    uow.wake(f"unit:{row.id}")
    if row.node_id:
        uow.wake(f"node:{row.node_id}")


def _invocation_hash(body: LlmInvocationReport) -> str:
    data = body.model_dump(mode="json", exclude={"claim_token"})
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def record_invocation(
    db: Database, node_id: str, unit_id: str, body: LlmInvocationReport
) -> tuple[int, LlmInvocationAccepted]:
    """Record one LLM call. Returns (201 | 200, reply); a stale claim is recorded as platform
    cost and then refused with 409 ``stale_claim``."""
    ensure_storable(body, "the report")
    digest = _invocation_hash(body)
    stale_error: Conflict | None = None
    with write_transaction(db) as uow:
        conn = uow.conn
        row = load_unit(conn, unit_id)
        if row is None:
            raise NotFound(f"work unit {unit_id} not found")
        prior = conn.execute(
            select(llm_invocations).where(
                llm_invocations.c.work_unit_id == unit_id,
                llm_invocations.c.invocation_id == body.invocation_id,
            )
        ).first()
        if prior is not None:
            if prior.request_hash != digest:
                raise Conflict(
                    f"invocation {body.invocation_id} was already reported with other values",
                    code="idempotency_conflict",
                )
            if prior.stale:
                raise stale_claim(unit_id, "the invocation was reported under a stale claim")
            pricing = token_pricing(conn, body.model)
            return 200, LlmInvocationAccepted(
                invocation_id=body.invocation_id,
                work_unit_id=unit_id,
                seq=prior.seq,
                pricing=pricing.model_dump(),
            )
        current = (
            row.status == WorkUnitStatus.CLAIMED.value
            and row.claim_token == body.claim_token
            and row.node_id == node_id
        )
        attempt = row.attempt
        if not current:
            held = conn.execute(
                select(claims.c.node_id, claims.c.attempt).where(
                    claims.c.claim_token == body.claim_token,
                    claims.c.work_unit_id == unit_id,
                )
            ).first()
            if held is None or held.node_id != node_id:
                # not a claim this node ever held on this unit: nothing to keep
                raise stale_claim(unit_id, _why_stale(row, node_id, body.claim_token))
            attempt = held.attempt
            stale_error = stale_claim(
                unit_id, "the claim was lost; the spend is kept as platform cost"
            )
        pricing = token_pricing(conn, body.model)
        stored = append(
            uow,
            [
                NewEvent(
                    event_id=f"{unit_id}/llm/{body.invocation_id}",
                    type=EventType.LLM_INVOCATION_COMPLETED,
                    tenant_id=row.tenant_id,
                    stream_id=unit_id,
                    correlation_id=row.execution_session_id,
                    payload=LlmInvocationCompleted(
                        invocation_id=body.invocation_id,
                        node_id=node_id,
                        attempt=attempt,
                        provider=body.provider,
                        model=body.model,
                        tokens_in=body.tokens_in,
                        tokens_out=body.tokens_out,
                        total_tokens=body.total_tokens,
                        latency_ms=body.latency_ms,
                        estimated_cost_usd=f"{body.estimated_cost_usd:.6f}",
                        pricing=pricing,
                        stale_claim=not current,
                    ),
                )
            ],
        )[0]
        conn.execute(
            llm_invocations.insert().values(
                work_unit_id=unit_id,
                invocation_id=body.invocation_id,
                attempt=attempt,
                request_hash=digest,
                seq=stored.seq,
                stale=not current,
            )
        )
    if stale_error is not None:
        raise stale_error
    return 201, LlmInvocationAccepted(
        invocation_id=body.invocation_id,
        work_unit_id=unit_id,
        seq=stored.seq,
        pricing=pricing.model_dump(),
    )


def check_node_path(principal_node: str, path_node: str) -> None:
    if principal_node != path_node:
        raise Forbidden("a node token acts only on its own node")


__all__: Sequence[str] = [
    "claim",
    "complete",
    "fail",
    "poll_once",
    "record_invocation",
]


def report(
    db: Database,
    ctx: SchedulerContext,
    node_id: str,
    completions: Sequence[tuple[str, CompleteRequest]],
    failures: Sequence[tuple[str, FailRequest]],
) -> tuple[list[ReportResult], list[ReportResult]]:
    """Many completions and failures of one node in one transaction (the agent's fast path);
    each item succeeds or fails on its own, exactly as its single-unit route would."""
    with write_transaction(db) as uow:
        done = complete_in(uow, ctx, node_id, completions) if completions else []
        failed: list[ReportResult] = []
        for unit_id, body in failures:
            savepoint = uow.conn.begin_nested()
            try:
                failed.append((fail_in(uow, ctx, node_id, unit_id, body), None))
                savepoint.commit()
            except KrakoError as exc:
                savepoint.rollback()
                failed.append((None, exc))
    return done, failed
