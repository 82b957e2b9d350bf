"""Nodes: registration (join token), heartbeat, long-poll, drain, and the registry view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from control_plane.api import longpoll
from control_plane.api.deps import Admin, JoinToken, NodeId, ServicesDep
from control_plane.api.errors import problem_model, responses
from control_plane.api.pagination import MAX_LIMIT, cut_page, decode_cursor
from control_plane.api.replies import model_response
from control_plane.errors import KrakoError
from control_plane.fleet import nodes, queries
from control_plane.units import reports as unit_reports
from control_plane.units.validation import ensure_storable
from shared.wire import (
    HeartbeatReply,
    HeartbeatRequest,
    Node,
    NodeRegister,
    NodeRegistration,
    Page,
    PollReply,
    PollRequest,
    ReportResult,
    ReportsReply,
    ReportsRequest,
    WorkUnit,
)

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])


@router.post(
    "",
    status_code=201,
    operation_id="register_node",
    summary="Register a node (join token)",
    description="Registers a node with the join token, or re-registers it: the same node_id "
    "again gets a fresh token (an agent restart) and the old token stops working.",
    responses=responses(401, 403, 404, 422),
)
async def register(body: NodeRegister, _: JoinToken, services: ServicesDep) -> NodeRegistration:
    node_id, token = await run_in_threadpool(nodes.register, services.db, services.scheduler, body)
    services.auth_cache.forget_node(node_id)  # the old token stops working here at once
    leases = services.settings.leases
    return NodeRegistration(
        node_id=node_id,
        node_token=token,
        heartbeat_interval_s=leases.heartbeat_interval_s,
        lease_s=leases.lease_s,
    )


@router.post(
    "/{node_id}/heartbeat",
    operation_id="node_heartbeat",
    response_model=HeartbeatReply,
    summary="Heartbeat (node)",
    description="Marks the node alive and renews the leases of the units it holds; "
    "'revoked' lists units it reports running that are no longer its own: stop them.",
    responses=responses(401, 403, 404, 422),
)
async def heartbeat(
    node_id: str, body: HeartbeatRequest, node: NodeId, services: ServicesDep
) -> Response:
    lease_s = services.settings.leases.lease_s
    return model_response(
        await run_in_threadpool(nodes.heartbeat, services.db, node, body, lease_s)
    )


@router.post(
    "/{node_id}/poll",
    operation_id="node_poll",
    response_model=PollReply,
    summary="Long-poll for work (node)",
    description="Returns as soon as a unit is offered to this node, or empty when wait_s "
    "runs out. With claim=true the units are claimed in the same step and returned as "
    "claims (the fast path: one request per batch).",
    responses=responses(401, 403, 404, 422),
)
async def poll(
    node_id: str, body: PollRequest, node: NodeId, request: Request, services: ServicesDep
) -> Response:
    return model_response(await longpoll.poll(services, request, node, body))


@router.post(
    "/{node_id}/reports",
    operation_id="node_reports",
    response_model=ReportsReply,
    summary="Report many completions and failures (node)",
    description="Batch form of /v1/workunits/{id}/complete and /fail for one node: one "
    "transaction, and each item gets the status its single-unit route would give (200, "
    "404, 409 stale_claim), in order. Repeats are idempotent as on the single routes.",
    responses=responses(401, 403, 404, 413, 422),
)
async def reports(
    node_id: str, body: ReportsRequest, node: NodeId, services: ServicesDep
) -> Response:
    for item in [*body.completions, *body.failures]:
        ensure_storable(item, "the report")
    done, failed = await run_in_threadpool(
        unit_reports.report,
        services.db,
        services.scheduler,
        node,
        [(c.work_unit_id, c) for c in body.completions],
        [(f.work_unit_id, f) for f in body.failures],
    )
    return model_response(ReportsReply(completions=_results(done), failures=_results(failed)))


def _results(items: list[tuple[WorkUnit | None, KrakoError | None]]) -> list[ReportResult]:
    return [
        ReportResult(status=200, work_unit=unit)
        if error is None
        else ReportResult(status=error.status, error=problem_model(error))
        for unit, error in items
    ]


@router.post(
    "/{node_id}/drain",
    operation_id="drain_node",
    summary="Drain a node (admin)",
    description="No new placements on the node; its offers not yet claimed go back to the "
    "queue; what it runs finishes.",
    responses=responses(401, 403, 404),
)
async def drain(node_id: str, _: Admin, services: ServicesDep) -> Node:
    return await run_in_threadpool(nodes.drain, services.db, node_id)


@router.get(
    "",
    operation_id="list_nodes",
    summary="List nodes (admin)",
    description="The node registry, paginated by cursor.",
    responses=responses(401, 403, 404, 422),
)
async def list_nodes(
    _: Admin,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: str | None = None,
) -> Page[Node]:
    secret = services.settings.api.admin_token or ""
    after = decode_cursor(secret, "nodes", cursor) if cursor else None
    found = await run_in_threadpool(queries.read_nodes, services.db, after, limit + 1)
    items, next_cursor = cut_page(secret, "nodes", found, limit, lambda n: n.node_id)
    return Page[Node](items=items, next_cursor=next_cursor)


@router.get(
    "/{node_id}",
    operation_id="get_node",
    summary="Read a node (admin)",
    description="One node of the registry.",
    responses=responses(401, 403, 404),
)
async def get_node(node_id: str, _: Admin, services: ServicesDep) -> Node:
    return await run_in_threadpool(queries.read_node, services.db, node_id)
