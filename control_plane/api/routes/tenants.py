"""Tenants: creation (admin) and self-inspection (tenant)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import Admin, ServicesDep, TenantId
from control_plane.api.errors import responses
from control_plane.tenants.commands import register_tenant, set_limits
from control_plane.tenants.queries import read_tenant
from shared.wire import Tenant, TenantCreate, TenantCreated, TenantLimits

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post(
    "",
    status_code=201,
    operation_id="create_tenant",
    summary="Create a tenant",
    description="Creates a tenant and returns its API key once (stored only as a hash).",
    responses=responses(401, 403, 422),
)
async def create(body: TenantCreate, _: Admin, services: ServicesDep) -> TenantCreated:
    return await run_in_threadpool(register_tenant, services.db, body.name)


@router.get(
    "/me",
    operation_id="get_current_tenant",
    summary="The calling tenant",
    description="Returns the tenant that owns the API key.",
    responses=responses(401, 403),
)
async def me(tenant_id: TenantId, services: ServicesDep) -> Tenant:
    return await run_in_threadpool(read_tenant, services.db, tenant_id)


@router.put(
    "/{tenant_id}/limits",
    status_code=204,
    operation_id="set_tenant_limits",
    summary="Set a tenant's limits",
    description="Max running units and a submission rate limit (token bucket), enforced "
    "across all replicas. Null removes a limit. Each change is a tenant.limits.changed event.",
    responses=responses(401, 403, 404),
)
async def put_limits(
    tenant_id: str, body: TenantLimits, _: Admin, services: ServicesDep
) -> Response:
    await run_in_threadpool(
        set_limits,
        services.db,
        tenant_id,
        body.max_running,
        body.submit_rate_per_s,
        body.submit_burst,
    )
    return Response(status_code=204)
