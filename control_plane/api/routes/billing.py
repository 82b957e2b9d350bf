"""Billing: the ledger (JSON pages or JSONL), wallets, replay verification, anomalies, the
price table and budgets.

The reads (ledger, wallet, anomalies) never write: each first waits, briefly, for the billing
consumer to fold the log as it stood when the read came in (``longpoll.billing_settled``), so a
line shows right after the completion that caused it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from control_plane.api import longpoll
from control_plane.api.deps import Admin, ServicesDep, Viewer
from control_plane.api.errors import responses
from control_plane.api.pagination import MAX_LIMIT, cut_page, decode_cursor
from control_plane.billing import budget as budgets
from control_plane.billing import ledger
from control_plane.billing.prices import price_table, set_price
from control_plane.billing.replay import replay as replay_billing
from control_plane.errors import NotFound
from shared.wire import (
    AnomalyReport,
    BudgetReply,
    BudgetRequest,
    LedgerPage,
    ModelPriceRequest,
    PriceTableReply,
    ReplayReport,
    Wallet,
)

router = APIRouter(prefix="/v1/billing", tags=["billing"])

NDJSON = "application/x-ndjson"


@router.get(
    "/ledger",
    operation_id="get_ledger",
    summary="Ledger lines",
    description="Lines in (source_seq, entry_id) order. A tenant sees its own; the admin all, "
    "or one tenant's with tenant_id. With 'Accept: application/x-ndjson' the whole selection "
    "streams as canonical JSONL (sorted keys, fixed 6-decimal money), one line per entry, in "
    "canonical ledger order (source_seq, then line-item type and sub-key): the admin's full "
    "export is byte for byte the JSONL sink's file and the replayed ledger.",
    response_model=LedgerPage,
    responses={
        200: {"content": {NDJSON: {}}, "description": "JSON page or JSONL stream"},
        **responses(401, 403, 422),
    },
)
async def get_ledger(
    viewer: Viewer,
    services: ServicesDep,
    request: Request,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: str | None = None,
    tenant_id: str | None = None,
) -> LedgerPage | StreamingResponse:
    who = viewer.tenant_id if viewer.tenant_id is not None else tenant_id
    secret = services.settings.api.admin_token or ""
    scope = f"ledger:{who or '*'}:{after}"
    key: tuple[int, str] | None = None
    if cursor:
        seq_s, _, entry = decode_cursor(secret, scope, cursor).partition(":")
        key = (int(seq_s), entry)
    await longpoll.billing_settled(services)
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(ledger.ledger_jsonl(services.db, who, after), media_type=NDJSON)
    found = await run_in_threadpool(ledger.read_ledger, services.db, who, after, key, limit + 1)
    entries, next_cursor = cut_page(
        secret, scope, found, limit, lambda e: f"{e.source_seq}:{e.entry_id}"
    )
    return LedgerPage(entries=entries, next_cursor=next_cursor)


@router.get(
    "/wallets/{tenant_id}",
    operation_id="get_wallet",
    summary="A tenant's wallet",
    description="Totals by line-item type and in all, current to as_of_seq (the global seq of "
    "the last event folded into it). A tenant reads only its own (another's is 404).",
    responses=responses(401, 403, 404),
)
async def get_wallet(tenant_id: str, viewer: Viewer, services: ServicesDep) -> Wallet:
    if viewer.tenant_id is not None and viewer.tenant_id != tenant_id:
        raise NotFound(f"tenant {tenant_id} not found")
    await longpoll.billing_settled(services)
    return await run_in_threadpool(ledger.read_wallet, services.db, tenant_id)


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
    services: ServicesDep,
    from_snapshot: Annotated[
        bool, Query(description="Start from the latest wallet snapshot instead of seq 0.")
    ] = False,
) -> ReplayReport:
    return await run_in_threadpool(replay_billing, services.db, from_snapshot, services.ledger_sink)


@router.get(
    "/anomalies",
    operation_id="get_billing_anomalies",
    summary="Billing anomalies (admin)",
    description="Completed units without a line, lines without a source event, duplicates, "
    "negative or non-6dp amounts, invocations under a stale claim (platform cost, not billed "
    "to the tenant), and billing-flag misconfiguration.",
    responses=responses(401, 403),
)
async def anomalies(_: Admin, services: ServicesDep) -> AnomalyReport:
    flags = services.settings.billing
    conflict = flags.bill_llm_from_workunit_completed and flags.bill_llm_from_invocation
    await longpoll.billing_settled(services)
    return await run_in_threadpool(ledger.anomaly_report, services.db, conflict)


@router.get(
    "/prices",
    operation_id="get_prices",
    summary="The price table in force",
    description="Token rates per model (USD per one million tokens) and the CPU rate.",
    responses=responses(401, 403),
)
async def get_prices(_: Viewer, services: ServicesDep) -> PriceTableReply:
    return await run_in_threadpool(price_table, services.db)


@router.put(
    "/prices/{model}",
    operation_id="set_model_price",
    summary="Set a model's price (admin)",
    description="A new price version; a billing.price.changed event. Events already in the "
    "log keep the price stamped into them.",
    responses=responses(401, 403, 422),
)
async def put_price(
    model: str, body: ModelPriceRequest, _: Admin, services: ServicesDep
) -> PriceTableReply:
    return await run_in_threadpool(
        set_price, services.db, model, body.usd_per_1m_in, body.usd_per_1m_out
    )


@router.put(
    "/budgets/{tenant_id}",
    operation_id="set_budget",
    summary="Set a tenant's budget (admin)",
    description="Submissions that would take spend plus the estimated cost of queued and "
    "running work past the budget get 402 budget_exhausted (and a billing.budget.refused "
    "event). Null removes the budget.",
    responses=responses(401, 403, 404, 422),
)
async def put_budget(
    tenant_id: str, body: BudgetRequest, _: Admin, services: ServicesDep
) -> BudgetReply:
    return await run_in_threadpool(budgets.set_budget, services.db, tenant_id, body.budget_usd)
