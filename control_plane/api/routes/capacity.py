"""Capacity: the admission mode, queue depth and the autoscaler's last decision; overrides."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import Admin, ServicesDep, Viewer
from control_plane.api.errors import responses
from control_plane.capacity import mode as capacity
from shared.wire import CapacityModeRequest, CapacityReport

router = APIRouter(prefix="/v1/capacity", tags=["capacity"])


@router.get(
    "",
    operation_id="get_capacity",
    summary="Capacity and admission mode",
    description="The mode in force (OPEN, THROTTLED, CRITICAL), healthy and desired nodes, "
    "queue depth by priority, running units, utilization and the last autoscaler decision.",
    responses=responses(401, 403),
)
async def get_capacity(_: Viewer, services: ServicesDep) -> CapacityReport:
    return await run_in_threadpool(capacity.read_report, services.db)


@router.put(
    "/mode",
    operation_id="set_capacity_mode",
    summary="Override the admission mode (admin)",
    description="A manual override, itself an event (capacity.override.set). It holds for "
    "ttl_s, or until DELETE; while it holds the autoscaler does not change the mode. Setting "
    "the mode already in force appends no capacity.admission.mode.changed event but still "
    "pins it. When the override ends the autoscaler decides at its next tick.",
    responses=responses(401, 403, 422),
)
async def put_mode(body: CapacityModeRequest, _: Admin, services: ServicesDep) -> CapacityReport:
    return await run_in_threadpool(
        capacity.set_override, services.db, body.mode, body.reason, body.ttl_s
    )


@router.delete(
    "/mode",
    status_code=204,
    operation_id="clear_capacity_mode",
    summary="End a manual override (admin)",
    description="The autoscaler decides the mode again at its next tick.",
    responses=responses(401, 403),
)
async def delete_mode(_: Admin, services: ServicesDep) -> Response:
    await run_in_threadpool(capacity.clear_override, services.db, "cleared by admin")
    return Response(status_code=204)
