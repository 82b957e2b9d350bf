"""Nodes: registration (join token), heartbeat, long-poll, drain, and the registry view."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import (
    Admin,
    AuthCache,
    CtxDep,
    DbDep,
    JoinToken,
    NodeP,
    NotifierDep,
    SettingsDep,
    node_path_guard,
)
from control_plane.api.errors import problem_model, responses
from control_plane.api.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from control_plane.errors import KrakoError
from control_plane.fleet import nodes, queries
from control_plane.units import claims
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


# Wake-ups make a waiting poll return at once (in-process, and LISTEN/NOTIFY across replicas,
# which wakes every waiter after a reconnect). This re-check is only a backstop; an idle
# re-check only reads.
POLL_RECHECK_S = 10.0


@router.post(
    "",
    status_code=201,
    operation_id="register_node",
    summary="Register a node (join token)",
    description="Registers a node with the join token, or re-registers it: the same node_id "
    "again gets a fresh token (an agent restart) and the old token stops working.",
    responses=responses(401, 403, 404, 422),
)
async def register(
    body: NodeRegister, _: JoinToken, request: Request, db: DbDep, ctx: CtxDep, s: SettingsDep
) -> NodeRegistration:
    node_id, token = await run_in_threadpool(nodes.register, db, ctx, body)
    cache: AuthCache = request.app.state.auth_cache
    cache.forget_node(node_id)
    return NodeRegistration(
        node_id=node_id,
        node_token=token,
        heartbeat_interval_s=s.leases.heartbeat_interval_s,
        lease_s=s.leases.lease_s,
    )


@router.post(
    "/{node_id}/heartbeat",
    operation_id="node_heartbeat",
    summary="Heartbeat (node)",
    description="Marks the node alive and renews the leases of the units it holds; "
    "'revoked' lists units it reports running that are no longer its own: stop them.",
    responses=responses(401, 403, 404, 422),
)
async def heartbeat(
    node_id: str, body: HeartbeatRequest, p: NodeP, db: DbDep, s: SettingsDep
) -> HeartbeatReply:
    node_path_guard(p, node_id)
    return await run_in_threadpool(nodes.heartbeat, db, node_id, body, s.leases.lease_s)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.post(
    "/{node_id}/poll",
    operation_id="node_poll",
    summary="Long-poll for work (node)",
    description="Returns as soon as a unit is offered to this node, or empty when wait_s "
    "runs out. With claim=true the units are claimed in the same step and returned as "
    "claims (the fast path: one request per batch).",
    responses=responses(401, 403, 404, 422),
)
async def poll(
    node_id: str,
    body: PollRequest,
    p: NodeP,
    request: Request,
    db: DbDep,
    ctx: CtxDep,
    notifier: NotifierDep,
    s: SettingsDep,
) -> PollReply:
    node_path_guard(p, node_id)
    deadline = time.monotonic() + body.wait_s
    disconnect = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            # only this node's offers wake it: a submission anywhere must not wake every
            # idle agent (placement, the sweep and completions put work on a node)
            with notifier.subscribe(f"node:{node_id}") as fut:
                assignments, granted = await run_in_threadpool(
                    claims.poll_once,
                    db,
                    ctx,
                    node_id,
                    body.max_units,
                    body.claim,
                    s.leases.lease_s,
                    True,
                )
                if assignments or granted:
                    return PollReply(assignments=assignments, claims=granted)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return PollReply()
                await asyncio.wait(
                    {asyncio.shield(fut), disconnect},
                    timeout=min(remaining, POLL_RECHECK_S),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if disconnect.done():
                    return PollReply()
    finally:
        disconnect.cancel()
        with contextlib.suppress(BaseException):
            await disconnect


@router.post(
    "/{node_id}/reports",
    operation_id="node_reports",
    summary="Report many completions and failures (node)",
    description="Batch form of /v1/workunits/{id}/complete and /fail for one node: one "
    "transaction, and each item gets the status its single-unit route would give (200, "
    "404, 409 stale_claim), in order. Repeats are idempotent as on the single routes.",
    responses=responses(401, 403, 404, 413, 422),
)
async def reports(
    node_id: str, body: ReportsRequest, p: NodeP, db: DbDep, ctx: CtxDep
) -> ReportsReply:
    node_path_guard(p, node_id)
    for item in [*body.completions, *body.failures]:
        ensure_storable(item, "the report")
    done, failed = await run_in_threadpool(
        unit_reports.report,
        db,
        ctx,
        node_id,
        [(c.work_unit_id, c) for c in body.completions],
        [(f.work_unit_id, f) for f in body.failures],
    )
    return ReportsReply(completions=_results(done), failures=_results(failed))


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
async def drain(node_id: str, _: Admin, db: DbDep) -> Node:
    await run_in_threadpool(nodes.drain, db, node_id)

    def load() -> Node:
        with db.engine.connect() as conn:
            return queries.get_node(conn, node_id)

    return await run_in_threadpool(load)


@router.get(
    "",
    operation_id="list_nodes",
    summary="List nodes (admin)",
    description="The node registry, paginated by cursor.",
    responses=responses(401, 403, 404, 422),
)
async def list_nodes(
    _: Admin,
    db: DbDep,
    s: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: str | None = None,
) -> Page[Node]:
    secret = s.api.admin_token or ""
    after = decode_cursor(secret, "nodes", cursor) if cursor else None

    def load() -> list[Node]:
        with db.engine.connect() as conn:
            return queries.list_nodes(conn, after, limit + 1)

    items = await run_in_threadpool(load)
    more = len(items) > limit
    items = items[:limit]
    next_cursor = encode_cursor(secret, "nodes", items[-1].node_id) if more and items else None
    return Page[Node](items=items, next_cursor=next_cursor)


@router.get(
    "/{node_id}",
    operation_id="get_node",
    summary="Read a node (admin)",
    description="One node of the registry.",
    responses=responses(401, 403, 404),
)
async def get_node(node_id: str, _: Admin, db: DbDep) -> Node:
    def load() -> Node:
        with db.engine.connect() as conn:
            return queries.get_node(conn, node_id)

    return await run_in_threadpool(load)
