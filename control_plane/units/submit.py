"""Submit (one unit or a batch), from the tenant's side.

One transaction: admission (capacity mode, the tenant's rate limit, the budget hook),
idempotency keys, then ``lifecycle.enqueue`` for the new units and the placement of whatever
can run now, all committed together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import bindparam, select, update

from control_plane.capacity.mode import current_mode
from control_plane.db.engine import Database
from control_plane.db.tables import tenants, work_units
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.errors import BadRequest, Conflict, KrakoError, TooManyRequests
from control_plane.ids import new_id
from control_plane.scheduling.admission import (
    TokenBucket,
    retry_after_header,
    retry_after_s,
    submission_allowed,
    take,
)
from control_plane.scheduling.scheduler import SchedulerContext, schedule_pending
from control_plane.units import lifecycle
from control_plane.units.rows import WORK_UNIT_COLUMNS, to_work_unit
from control_plane.units.validation import validate_payload, validate_text
from shared.payloads import UnitPayload
from shared.wire import BatchItem, WorkUnit, WorkUnitSubmit

BudgetHook = Callable[[UnitOfWork, str, Sequence["Accepted"]], None]
RefusalHook = Callable[[UnitOfWork, str, KrakoError], None]


@dataclass
class Outcome:
    """What one submitted item got: an HTTP status and a unit, or an error."""

    status: int
    unit: WorkUnit | None = None
    error: KrakoError | None = None


@dataclass
class Accepted:
    """A new unit about to be enqueued (the budget hook prices it: ``est_cost_micros``)."""

    id: str
    item: WorkUnitSubmit
    idempotency_key: str | None
    request_hash: str
    payload: UnitPayload  # the item's payload, parsed once (the item's dict is what is stored)
    est_cost_micros: int = 0


def request_hash(item: WorkUnitSubmit) -> str:
    body = item.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_batch_item(raw: Any) -> BatchItem:
    if not isinstance(raw, dict):
        raise BadRequest("each unit must be an object")
    try:
        return BatchItem.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(
            f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")),
            code="validation_error",
            extra={"errors": orjson.loads(exc.json(include_url=False))},
        )


def submit(
    db: Database,
    ctx: SchedulerContext,
    tenant_id: str,
    items: Sequence[tuple[WorkUnitSubmit | KrakoError, str | None]],
    budget: tuple[BudgetHook, RefusalHook] | None = None,
) -> list[Outcome]:
    """Submit units in one transaction; each item gets its own outcome, in order."""
    with write_transaction(db) as uow:
        outcomes = _submit(uow, ctx, tenant_id, items, budget)
    return outcomes


def _submit(
    uow: UnitOfWork,
    ctx: SchedulerContext,
    tenant_id: str,
    items: Sequence[tuple[WorkUnitSubmit | KrakoError, str | None]],
    budget: tuple[BudgetHook, RefusalHook] | None,
) -> list[Outcome]:
    conn = uow.conn
    outcomes: list[Outcome | None] = [None] * len(items)
    keys = [
        k
        for item, k in items
        if k is not None and "\x00" not in k and not isinstance(item, KrakoError)
    ]
    existing: dict[str, Any] = {}
    if keys:
        for row in conn.execute(
            select(
                *WORK_UNIT_COLUMNS, work_units.c.idempotency_key, work_units.c.request_hash
            ).where(work_units.c.tenant_id == tenant_id, work_units.c.idempotency_key.in_(keys))
        ):
            existing[row.idempotency_key] = row

    mode = current_mode(conn)
    accepted: list[tuple[int, Accepted]] = []
    new_keys: dict[str, Accepted] = {}
    for i, (item, key) in enumerate(items):
        if isinstance(item, KrakoError):
            outcomes[i] = Outcome(item.status, error=item)
            continue
        try:
            validate_text(item, key)
            parsed = validate_payload(item.kind, item.payload)
        except KrakoError as exc:
            outcomes[i] = Outcome(exc.status, error=exc)
            continue
        digest = request_hash(item)
        if key is not None and key in existing:
            row = existing[key]
            if row.request_hash != digest:
                outcomes[i] = Outcome(409, error=_idempotency_conflict(key))
            else:
                outcomes[i] = Outcome(200, unit=to_work_unit(row))
            continue
        if key is not None and key in new_keys:
            prior = new_keys[key]
            if prior.request_hash != digest:
                outcomes[i] = Outcome(409, error=_idempotency_conflict(key))
            else:
                accepted.append((i, prior))  # same unit as earlier in this batch; 200 below
            continue
        if not submission_allowed(mode, item.priority.level):
            err = TooManyRequests(
                f"capacity mode is {mode.value}: only p0 submissions are admitted",
                code="admission_rejected",
                retry_after_s=retry_after_s(mode),
            )
            outcomes[i] = Outcome(429, error=err)
            continue
        acc = Accepted(new_id("wu"), item, key, digest, parsed)
        accepted.append((i, acc))
        if key is not None:
            new_keys[key] = acc

    fresh = _dedupe([a for _, a in accepted])
    fresh = _rate_limit(uow, tenant_id, fresh, accepted, outcomes)
    if budget is not None and fresh:
        check, refuse = budget
        try:
            check(uow, tenant_id, fresh)
        except KrakoError as exc:
            refuse(uow, tenant_id, exc)
            refused = {a.id for a in fresh}
            for i, acc in accepted:
                if acc.id in refused and outcomes[i] is None:
                    outcomes[i] = Outcome(exc.status, error=exc)
            fresh = []
    stored: dict[str, WorkUnit] = {}
    if fresh:
        lifecycle.enqueue(uow, tenant_id, fresh)
        schedule_pending(uow, ctx)
        stored = {
            r.id: to_work_unit(r)
            for r in conn.execute(_UNITS_BY_ID, {"b_ids": [a.id for a in fresh]})
        }
    first_seen: set[str] = set()
    for i, acc in accepted:
        if outcomes[i] is not None:
            continue
        unit = stored.get(acc.id)
        if unit is None:
            continue
        outcomes[i] = Outcome(200 if acc.id in first_seen else 201, unit=unit)
        first_seen.add(acc.id)
    return [o if o is not None else Outcome(500) for o in outcomes]


_UNITS_BY_ID = select(*WORK_UNIT_COLUMNS).where(
    work_units.c.id.in_(bindparam("b_ids", expanding=True))
)


def _dedupe(accs: list[Accepted]) -> list[Accepted]:
    seen: set[str] = set()
    out = []
    for a in accs:
        if a.id not in seen:
            seen.add(a.id)
            out.append(a)
    return out


_BUCKET = select(
    tenants.c.submit_rate_per_s,
    tenants.c.submit_burst,
    tenants.c.bucket_tokens,
    tenants.c.bucket_updated_us,
).where(tenants.c.tenant_id == bindparam("b_tenant"))


def _rate_limit(
    uow: UnitOfWork,
    tenant_id: str,
    fresh: list[Accepted],
    accepted: list[tuple[int, Accepted]],
    outcomes: list[Outcome | None],
) -> list[Accepted]:
    """Apply the tenant's submission token bucket (if it has one) to the new units."""
    if not fresh:
        return fresh
    row = uow.conn.execute(_BUCKET, {"b_tenant": tenant_id}).first()
    if row is None or row.submit_rate_per_s is None:
        return fresh
    rate = float(row.submit_rate_per_s)
    burst = int(row.submit_burst or max(1, int(rate)))
    now_s = uow.now_us / 1_000_000
    bucket = TokenBucket(
        tokens=float(row.bucket_tokens) if row.bucket_tokens is not None else float(burst),
        updated_at=(row.bucket_updated_us / 1_000_000) if row.bucket_updated_us else now_s,
    )
    allowed: list[Accepted] = []
    refused: dict[str, float] = {}
    for acc in fresh:
        ok, bucket, wait = take(bucket, now_s, rate, burst, 1)
        if ok:
            allowed.append(acc)
        else:
            refused[acc.id] = wait
    uow.conn.execute(
        update(tenants)
        .where(tenants.c.tenant_id == tenant_id)
        .values(bucket_tokens=bucket.tokens, bucket_updated_us=int(bucket.updated_at * 1e6))
    )
    for i, acc in accepted:
        if acc.id in refused and outcomes[i] is None:
            outcomes[i] = Outcome(
                429,
                error=TooManyRequests(
                    f"tenant {tenant_id} exceeded its submission rate of {rate:g}/s",
                    code="rate_limited",
                    retry_after_s=retry_after_header(refused[acc.id]),
                ),
            )
    return allowed


def _idempotency_conflict(key: str) -> Conflict:
    return Conflict(
        f"Idempotency-Key {key!r} was already used with a different request body",
        code="idempotency_conflict",
    )
