"""Work units: submit (one or a batch), read, list, events, cancel — and the node's claim and
reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from starlette.concurrency import run_in_threadpool

from control_plane.api import longpoll
from control_plane.api.deps import NodeId, ServicesDep, TenantId, Viewer
from control_plane.api.errors import problem_model, responses
from control_plane.api.pagination import MAX_LIMIT, cut_page, decode_cursor
from control_plane.api.replies import model_response
from control_plane.billing.budget import budget_hook, record_refusal
from control_plane.errors import BadRequest, KrakoError
from control_plane.units import claims, queries, reports
from control_plane.units import submit as workunits
from control_plane.units.cancel import cancel as cancel_unit
from shared.enums import Priority, WorkUnitKind, WorkUnitStatus
from shared.wire import (
    MAX_WAIT_S,
    BatchReply,
    BatchResult,
    BatchSubmit,
    ClaimReply,
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    LlmInvocationAccepted,
    LlmInvocationReport,
    Page,
    WorkUnit,
    WorkUnitEvents,
    WorkUnitSubmit,
)

router = APIRouter(prefix="/v1/workunits", tags=["workunits"])

BUDGET = (budget_hook, record_refusal)


def _idem_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters")
    return value


@router.post(
    "",
    status_code=201,
    operation_id="submit_work_unit",
    response_model=WorkUnit,
    summary="Submit a work unit",
    description="Queues a unit (and places it at once when a node has a free slot). With an "
    "Idempotency-Key (scoped to the tenant), the same key and body again return 200 with the "
    "same unit and no new event; the same key with another body is 409 idempotency_conflict. "
    "Refused by admission: 429 admission_rejected with Retry-After.",
    responses={
        200: {"model": WorkUnit, "description": "Idempotent repeat"},
        **responses(401, 402, 403, 409, 413, 422, 429),
    },
)
async def submit(
    body: WorkUnitSubmit,
    tenant_id: TenantId,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    key = _idem_key(idempotency_key)
    [outcome] = await run_in_threadpool(
        workunits.submit, services.db, services.scheduler, tenant_id, [(body, key)], BUDGET
    )
    if outcome.error is not None:
        raise outcome.error
    assert outcome.unit is not None  # an outcome carries its unit or its error
    return model_response(outcome.unit, outcome.status)


@router.post(
    "/batch",
    operation_id="submit_work_units_batch",
    summary="Submit up to 1000 work units",
    description="One transaction; each result carries the HTTP status that unit alone would "
    "get, and the unit or the problem, in the order of the request.",
    responses=responses(401, 403, 413, 422),
)
async def submit_batch(body: BatchSubmit, tenant_id: TenantId, services: ServicesDep) -> BatchReply:
    items: list[tuple[WorkUnitSubmit | KrakoError, str | None]] = []
    for raw in body.units:
        try:
            item = workunits.parse_batch_item(raw)
            items.append((item, item.idempotency_key))
        except KrakoError as exc:
            items.append((exc, None))
    outcomes = await run_in_threadpool(
        workunits.submit, services.db, services.scheduler, tenant_id, items, BUDGET
    )
    return BatchReply(
        results=[
            BatchResult(status=o.status, work_unit=o.unit)
            if o.error is None
            else BatchResult(status=o.status, error=problem_model(o.error))
            for o in outcomes
        ]
    )


@router.get(
    "",
    operation_id="list_work_units",
    summary="List work units",
    description="A tenant sees its own units; the admin sees all. Filters: status, kind, "
    "priority (unknown values are 422) and execution_session_id. Paginated by cursor.",
    responses=responses(401, 403, 413, 422),
)
async def list_units(
    viewer: Viewer,
    services: ServicesDep,
    status: WorkUnitStatus | None = None,
    execution_session_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: str | None = None,
    kind: WorkUnitKind | None = None,
    priority: Priority | None = None,
) -> Page[WorkUnit]:
    secret = services.settings.api.admin_token or ""
    scope = f"workunits:{viewer.tenant_id or '*'}"
    after = decode_cursor(secret, scope, cursor) if cursor else None
    found = await run_in_threadpool(
        queries.read_units,
        services.db,
        viewer.tenant_id,
        status,
        execution_session_id,
        after,
        limit + 1,
        kind,
        priority,
    )
    units, next_cursor = cut_page(secret, scope, found, limit, lambda u: u.id)
    return Page[WorkUnit](items=units, next_cursor=next_cursor)


@router.get(
    "/{unit_id}",
    operation_id="get_work_unit",
    response_model=WorkUnit,
    summary="Read a work unit",
    description="With wait_s (0-30) the request is held until the unit is terminal or the "
    "wait runs out. Another tenant's unit is 404.",
    responses=responses(401, 403, 404, 422),
)
async def get_unit(
    unit_id: str,
    viewer: Viewer,
    services: ServicesDep,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> Response:
    return model_response(await longpoll.unit(services, unit_id, viewer.tenant_id, wait_s))


@router.get(
    "/{unit_id}/events",
    operation_id="get_work_unit_events",
    summary="A unit's events",
    description="Every event of the unit, in log order.",
    responses=responses(401, 403, 404),
)
async def unit_events(unit_id: str, viewer: Viewer, services: ServicesDep) -> WorkUnitEvents:
    return await run_in_threadpool(queries.read_unit_events, services.db, unit_id, viewer.tenant_id)


@router.post(
    "/{unit_id}/cancel",
    operation_id="cancel_work_unit",
    response_model=WorkUnit,
    summary="Cancel a work unit",
    description="Cancels a unit that is not terminal (409 already_terminal otherwise). A node "
    "holding it is told 'revoked' at its next heartbeat and its reports become stale.",
    responses=responses(401, 403, 404, 409),
)
async def cancel(unit_id: str, viewer: Viewer, services: ServicesDep) -> Response:
    unit = await run_in_threadpool(
        cancel_unit, services.db, services.scheduler, unit_id, viewer.tenant_id, viewer.actor
    )
    return model_response(unit)


@router.post(
    "/{unit_id}/claim",
    operation_id="claim_work_unit",
    response_model=ClaimReply,
    summary="Claim a work unit (node)",
    description="Only a node the unit was offered to, only for the current attempt, only "
    "once. The loser of a race it was offered to gets 409 already_claimed; any other node "
    "409 not_claimable. Asking again for a claim the node already holds returns it again.",
    responses=responses(401, 403, 404, 409, 422),
)
async def claim(
    unit_id: str, body: ClaimRequest, node_id: NodeId, services: ServicesDep
) -> Response:
    lease_s = services.settings.leases.lease_s
    reply = await run_in_threadpool(
        claims.claim, services.db, node_id, unit_id, body.attempt, lease_s
    )
    return model_response(reply)


@router.post(
    "/{unit_id}/llm-invocations",
    status_code=201,
    operation_id="report_llm_invocation",
    response_model=LlmInvocationAccepted,
    summary="Report an LLM invocation (node)",
    description="Telemetry of one LLM call under the node's claim. The control plane stamps "
    "its own price; the agent's estimated_cost_usd is telemetry only. The same invocation_id "
    "again: 200 and no new event. Under a stale claim: 409 stale_claim, and the spend is "
    "kept as platform cost (never billed to the tenant).",
    responses={
        200: {"model": LlmInvocationAccepted, "description": "Repeat"},
        **responses(401, 403, 404, 409, 422),
    },
)
async def llm_invocation(
    unit_id: str,
    body: LlmInvocationReport,
    node_id: NodeId,
    services: ServicesDep,
) -> Response:
    status, reply = await run_in_threadpool(
        reports.record_invocation, services.db, node_id, unit_id, body
    )
    return model_response(reply, status)


@router.post(
    "/{unit_id}/complete",
    operation_id="complete_work_unit",
    response_model=WorkUnit,
    summary="Report completion (node)",
    description="The same completion again: 200 and no new event. A claim token that is not "
    "the unit's current claim: 409 stale_claim.",
    responses=responses(401, 403, 404, 409, 422),
)
async def complete(
    unit_id: str, body: CompleteRequest, node_id: NodeId, services: ServicesDep
) -> Response:
    unit = await run_in_threadpool(
        reports.complete, services.db, services.scheduler, node_id, unit_id, body
    )
    return model_response(unit)


@router.post(
    "/{unit_id}/fail",
    operation_id="fail_work_unit",
    response_model=WorkUnit,
    summary="Report failure (node)",
    description="Requeued with attempt + 1 while attempts remain and retryable; otherwise the "
    "unit is failed.",
    responses=responses(401, 403, 404, 409, 422),
)
async def fail(unit_id: str, body: FailRequest, node_id: NodeId, services: ServicesDep) -> Response:
    unit = await run_in_threadpool(
        reports.fail, services.db, services.scheduler, node_id, unit_id, body
    )
    return model_response(unit)
