"""Billing: the ledger (JSON pages or JSONL), wallets, replay verification, anomalies, the
price table and budgets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import Admin, DbDep, SettingsDep, TenantOrAdmin
from control_plane.api.errors import responses
from control_plane.api.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from control_plane.billing import budget as budgets
from control_plane.billing import consumer as store
from control_plane.billing.domain.anomalies import find_anomalies
from control_plane.billing.domain.canonical import canonical_line
from control_plane.billing.domain.pricing import rate_str
from control_plane.billing.export import LedgerSink
from control_plane.billing.prices import change_model_price, load_table
from control_plane.billing.replay import replay as replay_billing
from control_plane.db.engine import Database
from control_plane.db.uow import write_transaction
from control_plane.errors import NotFound
from control_plane.tenants.commands import get_tenant
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


def _sink(request: Request) -> LedgerSink | None:
    """The process's JSONL sink (``KRAKO_LEDGER_JSONL_PATH``), if one is configured."""
    sink: LedgerSink | None = getattr(request.app.state, "ledger_sink", None)
    return sink


@router.get(
    "/ledger",
    operation_id="get_ledger",
    summary="Ledger lines",
    description="Lines in (source_seq, entry_id) order. A tenant sees its own; the admin all, "
    "or one tenant's with tenant_id. With 'Accept: application/x-ndjson' the whole selection "
    "streams as canonical JSONL (sorted keys, fixed 6-decimal money), one line per entry, in "
    "canonical ledger order (source_seq, then line-item type and sub-key): the admin's full "
    "export is byte for byte the JSONL sink's file and the replayed ledger.",
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
    secret = settings.api.admin_token or ""
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
    with store.read_snapshot(db) as conn:
        chunk: list[str] = []
        for line in store.iter_lines(conn, after_seq=after, tenant_id=tenant_id):
            chunk.append(canonical_line(line) + "\n")
            if len(chunk) >= 1000:
                yield "".join(chunk).encode()
                chunk = []
        if chunk:
            yield "".join(chunk).encode()


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
    "compares the sha256 digest of their canonical JSONL with the live state's, both at the "
    "billing consumer's checkpoint (as_of_seq). With from_snapshot=true the replay starts from "
    "the latest wallet snapshot and folds only the events after it (the live lines before it "
    "must add up to the snapshot's wallets). With a JSONL sink configured, the file is compared "
    "with the replayed ledger's canonical JSONL and rebuilt when it differs (jsonl_sink).",
    responses=responses(401, 403, 422),
)
async def replay(
    _: Admin,
    db: DbDep,
    request: Request,
    from_snapshot: Annotated[
        bool, Query(description="Start from the latest wallet snapshot instead of seq 0.")
    ] = False,
) -> ReplayReport:
    return await run_in_threadpool(replay_billing, db, from_snapshot, _sink(request))


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
        with store.read_snapshot(db) as conn:
            upto = store.checkpoint(conn)
            lines = store.all_lines(conn)
            # billing reads only its own event types: the rest cannot matter here
            events = list(store.events_upto(conn, upto, store.BILLING_TYPES))
        flags = settings.billing
        conflict = flags.bill_llm_from_workunit_completed and flags.bill_llm_from_invocation
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
