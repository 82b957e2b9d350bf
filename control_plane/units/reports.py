"""Reports from the node's side: LLM invocations, completions and failures, one at a time
or batched (``report``). Each is one transaction. A report carries the claim token; only the
unit's current claim is accepted, anything else is 409 ``stale_claim`` (fencing), and a
repeat of an accepted report gets the same answer again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Row, bindparam, func, select

from control_plane.billing.prices import bill_llm_from_completion, cpu_pricing, token_pricing
from control_plane.db.engine import Database
from control_plane.db.tables import claims, llm_invocations, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.errors import Conflict, KrakoError, NotFound, stale_claim
from control_plane.eventlog.emit import emit
from control_plane.eventlog.store import read_after_typed, us_to_dt
from control_plane.fleet.trust import record_outcome, record_outcomes
from control_plane.scheduling.scheduler import SchedulerContext, defer_placement
from control_plane.units import lifecycle
from control_plane.units.queries import load_unit
from control_plane.units.rows import to_work_unit
from control_plane.units.validation import ensure_storable
from shared.enums import WorkUnitStatus
from shared.events import (
    EventType,
    LlmInvocationCompleted,
    LlmUsage,
    WorkUnitCompleted,
    WorkUnitFailed,
)
from shared.wire import (
    CompleteRequest,
    FailRequest,
    LlmInvocationAccepted,
    LlmInvocationReport,
    WorkUnit,
)


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
    """Accept the completion of a unit ``node_id`` holds under ``body.claim_token``."""
    ensure_storable(body, "the report")
    with write_transaction(db) as uow:
        [(unit, error)] = complete_in(uow, ctx, node_id, [(unit_id, body)])
    if error is not None:
        raise error
    assert unit is not None
    return unit


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
    pricing = cpu_pricing(uow)
    from_completion = bill_llm_from_completion(conn)
    lifecycle.complete(
        uow,
        node_id,
        [
            (
                row,
                WorkUnitCompleted(
                    node_id=node_id,
                    attempt=row.attempt,
                    cpu_ms=body.cpu_ms,
                    result=body.result,
                    pricing=pricing,
                    llm_usage=_llm_usage(uow, row) if from_completion else [],
                ),
            )
            for row, body in accepted.values()
        ],
    )
    record_outcomes(uow, node_id, EventType.WORKUNIT_COMPLETED, len(accepted))
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
    totals: dict[str, list[int]] = {}
    for ev in read_after_typed(
        uow.conn, 0, 100_000, types=[EventType.LLM_INVOCATION_COMPLETED.value], stream_id=row.id
    ):
        p = ev.payload
        if not isinstance(p, LlmInvocationCompleted) or p.stale_claim or p.attempt != row.attempt:
            continue
        t = totals.setdefault(p.model, [0, 0])
        t[0] += p.tokens_in
        t[1] += p.tokens_out
    return [
        LlmUsage(
            model=model,
            tokens_in=t[0],
            tokens_out=t[1],
            pricing=token_pricing(uow, model),
        )
        for model, t in sorted(totals.items())
    ]


def fail(
    db: Database, ctx: SchedulerContext, node_id: str, unit_id: str, body: FailRequest
) -> WorkUnit:
    """Accept the failure of an attempt ``node_id`` holds: requeued while attempts remain and
    the error is retryable, else terminal."""
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
    lifecycle.fail(
        uow,
        row,
        WorkUnitFailed(
            node_id=node_id,
            attempt=row.attempt,
            error=body.error,
            retryable=body.retryable,
            requeued=requeue,
        ),
    )
    record_outcome(uow, node_id, EventType.WORKUNIT_FAILED)
    defer_placement(uow, ctx)
    done = load_unit(uow.conn, unit_id)
    assert done is not None
    return to_work_unit(done)


def _failed_attempt_repeat(uow: UnitOfWork, row: Row[Any], node_id: str, token: str) -> bool:
    """A retried ``fail`` whose first copy already requeued the unit: answer 200 again."""
    attempt = lifecycle.token_attempt(token)
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
            pricing = token_pricing(uow, body.model)
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
        pricing = token_pricing(uow, body.model)
        stored = emit(
            uow,
            LlmInvocationCompleted(
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
            event_id=f"{unit_id}/llm/{body.invocation_id}",
            tenant_id=row.tenant_id,
            stream_id=unit_id,
            correlation_id=row.execution_session_id,
        )
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
