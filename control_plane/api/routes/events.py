"""The event log, tailed over HTTP (admin: everything; tenant: its own events)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import DbDep, NotifierDep, TenantOrAdmin
from control_plane.api.errors import responses
from control_plane.api.pagination import MAX_LIMIT
from control_plane.eventlog.store import read_after
from control_plane.eventlog.wait import wait_for
from shared.events import EventType
from shared.wire import MAX_WAIT_S, EventsPage

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get(
    "",
    operation_id="list_events",
    summary="Tail the event log",
    description="Events with seq > after, in order. With wait_s the request is held until an "
    "event past 'after' exists (a tenant wakes only for its own events). last_seq is the seq "
    "of the last event returned (after when none): pass it as the next 'after'.",
    responses=responses(401, 403, 422),
)
async def list_events(
    p: TenantOrAdmin,
    db: DbDep,
    notifier: NotifierDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    type: EventType | None = None,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> EventsPage:
    deadline = time.monotonic() + wait_s
    topic = f"events:{p.tenant_id}" if p.tenant_id else "events"
    types = [type.value] if type is not None else None

    def load() -> EventsPage:
        with db.engine.connect() as conn:
            events = read_after(conn, after, limit, types=types, tenant_id=p.tenant_id)
        return EventsPage(events=events, last_seq=events[-1].seq if events else after)

    while True:
        with notifier.subscribe(topic) as fut:
            page = await run_in_threadpool(load)
            remaining = deadline - time.monotonic()
            if page.events or remaining <= 0:
                return page
            await wait_for(fut, min(remaining, 1.0))
