"""Billing: the ledger (JSON pages or JSONL), wallets, replay verification, anomalies, the
price table and budgets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import Admin, DbDep, SettingsDep, TenantOrAdmin
from control_plane.api.errors import responses
from control_plane.api.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from control_plane.billing import budget as budgets
from control_plane.billing import store
from control_plane.billing.anomalies import find_anomalies
from control_plane.billing.canonical import canonical_line
from control_plane.billing.pricing import rate_str
from control_plane.billing.projection import verify_replay
from control_plane.billing.stamps import change_model_price, load_table
from control_plane.db.engine import Database
from control_plane.db.uow import write_transaction
from control_plane.errors import NotFound
from control_plane.scheduler.tenants import get_tenant
from shared.wire import (
    AnomalyReport,
    BudgetReply,
    BudgetRequest,
    LedgerEntry,
    LedgerPage,
    ModelPriceRequest,
    PriceTableReply,
    ReplayReport,
    Wallet,
)

router = APIRouter(prefix="/v1/billing", tags=["billing"])

NDJSON = "application/x-ndjson"


def _snapshot(conn: Connection, db: Database) -> Connection:
    if db.is_postgres:
        return conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


@router.get(
    "/ledger",
    operation_id="get_ledger",
    summary="Ledger lines",
    description="Lines in (source_seq, entry_id) order. A tenant sees its own; the admin all, "
    "or one tenant's with tenant_id. With 'Accept: application/x-ndjson' the whole selection "
    "streams as canonical JSONL (sorted keys, fixed 6-decimal money), one line per entry.",
    responses={
        200: {"content": {NDJSON: {}}, "description": "JSON page or JSONL stream"},
        **responses(401, 403, 422),
    },
)
async def ledger(
    p: TenantOrAdmin,
    db: DbDep,
    settings: SettingsDep,
    request: Request,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: str | None = None,
    tenant_id: str | None = None,
) -> LedgerPage:
    who = p.tenant_id if p.tenant_id is not None else tenant_id
    secret = settings.admin_token or ""
    scope = f"ledger:{who or '*'}:{after}"
    key: tuple[int, str] | None = None
    if cursor:
        seq_s, _, entry = decode_cursor(secret, scope, cursor).partition(":")
        key = (int(seq_s), entry)
    await run_in_threadpool(store.catch_up, db)
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_jsonl(db, who, after), media_type=NDJSON)  # type: ignore[return-value]

    def load() -> list[LedgerEntry]:
        with db.engine.connect() as conn:
            return store.ledger_page(conn, who, after, key, limit + 1)

    entries = await run_in_threadpool(load)
    more = len(entries) > limit
    entries = entries[:limit]
    next_cursor = (
        encode_cursor(secret, scope, f"{entries[-1].source_seq}:{entries[-1].entry_id}")
        if more and entries
        else None
    )
    return LedgerPage(entries=entries, next_cursor=next_cursor)


def _jsonl(db: Database, tenant_id: str | None, after: int) -> Iterator[bytes]:
    key: tuple[int, str] | None = None
    with db.engine.connect() as conn:
        while True:
            page = store.ledger_page(conn, tenant_id, after, key, 1000)
            if not page:
                return
            yield "".join(canonical_line(e) + "\n" for e in page).encode()
            key = (page[-1].source_seq, page[-1].entry_id)


@router.get(
    "/wallets/{tenant_id}",
    operation_id="get_wallet",
    summary="A tenant's wallet",
    description="Totals by line-item type and in all, current to as_of_seq (the global seq of "
    "the last event folded into it). A tenant reads only its own (another's is 404).",
    responses=responses(401, 403, 404),
)
async def wallet(tenant_id: str, p: TenantOrAdmin, db: DbDep) -> Wallet:
    if p.tenant_id is not None and p.tenant_id != tenant_id:
        raise NotFound(f"tenant {tenant_id} not found")
    await run_in_threadpool(store.catch_up, db)

    def load() -> Wallet:
        with db.engine.connect() as conn:
            if get_tenant(conn, tenant_id) is None:
                raise NotFound(f"tenant {tenant_id} not found")
            return store.wallet_of(conn, tenant_id).to_wire()

    return await run_in_threadpool(load)


@router.post(
    "/replay",
    operation_id="replay_billing",
    summary="Verify billing by replay (admin)",
    description="Rebuilds ledger and wallets from the event log alone, in isolation, and "
    "compares the sha256 digest of their canonical JSONL with the live state's.",
    responses=responses(401, 403),
)
async def replay(_: Admin, db: DbDep) -> ReplayReport:
    await run_in_threadpool(store.catch_up, db)

    def run() -> ReplayReport:
        with db.engine.connect() as raw:
            conn = _snapshot(raw, db)
            upto = store.checkpoint(conn)
            lines = store.all_lines(conn)
            wallets = store.all_wallets(conn)
            return verify_replay(store.events_upto(conn, upto), lines, wallets, upto)

    return await run_in_threadpool(run)


@router.get(
    "/anomalies",
    operation_id="get_billing_anomalies",
    summary="Billing anomalies (admin)",
    description="Completed units without a line, lines without a source event, duplicates, "
    "negative or non-6dp amounts, invocations under a stale claim (platform cost, not billed "
    "to the tenant), and billing-flag misconfiguration.",
    responses=responses(401, 403),
)
async def anomalies(_: Admin, db: DbDep, settings: SettingsDep) -> AnomalyReport:
    await run_in_threadpool(store.catch_up, db)

    def run() -> AnomalyReport:
        with db.engine.connect() as raw:
            conn = _snapshot(raw, db)
            upto = store.checkpoint(conn)
            lines = store.all_lines(conn)
            events = list(store.events_upto(conn, upto))
        conflict = settings.bill_llm_from_workunit_completed and settings.bill_llm_from_invocation
        return AnomalyReport(anomalies=find_anomalies(events, lines, conflict))

    return await run_in_threadpool(run)


def _table_reply(db: Database) -> PriceTableReply:
    with db.engine.connect() as conn:
        table = load_table(conn)
    return PriceTableReply(
        price_version=table.price_version,
        usd_per_cpu_s=rate_str(table.usd_per_cpu_s),
        models={
            m: {
                "usd_per_1m_in": rate_str(p.usd_per_1m_in),
                "usd_per_1m_out": rate_str(p.usd_per_1m_out),
            }
            for m, p in sorted(table.models.items())
        },
    )


@router.get(
    "/prices",
    operation_id="get_prices",
    summary="The price table in force",
    description="Token rates per model (USD per one million tokens) and the CPU rate.",
    responses=responses(401, 403),
)
async def get_prices(_: TenantOrAdmin, db: DbDep) -> PriceTableReply:
    return await run_in_threadpool(_table_reply, db)


@router.put(
    "/prices/{model}",
    operation_id="set_model_price",
    summary="Set a model's price (admin)",
    description="A new price version; a billing.price.changed event. Events already in the "
    "log keep the price stamped into them.",
    responses=responses(401, 403, 422),
)
async def put_price(model: str, body: ModelPriceRequest, _: Admin, db: DbDep) -> PriceTableReply:
    def run() -> None:
        with write_transaction(db) as uow:
            change_model_price(uow, model, body.usd_per_1m_in, body.usd_per_1m_out)

    await run_in_threadpool(run)
    return await run_in_threadpool(_table_reply, db)


@router.put(
    "/budgets/{tenant_id}",
    operation_id="set_budget",
    summary="Set a tenant's budget (admin)",
    description="Submissions that would take spend plus the estimated cost of queued and "
    "running work past the budget get 402 budget_exhausted (and a billing.budget.refused "
    "event). Null removes the budget.",
    responses=responses(401, 403, 404, 422),
)
async def put_budget(tenant_id: str, body: BudgetRequest, _: Admin, db: DbDep) -> BudgetReply:
    return await run_in_threadpool(budgets.set_budget, db, tenant_id, body.budget_usd)
