"""The event log, tailed over HTTP (admin: everything; tenant: its own events)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.api import longpoll
from control_plane.api.deps import ServicesDep, Viewer
from control_plane.api.errors import responses
from control_plane.api.pagination import MAX_LIMIT
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
    viewer: Viewer,
    services: ServicesDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    type: EventType | None = None,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> EventsPage:
    return await longpoll.events(services, after, limit, type, viewer.tenant_id, wait_s)
