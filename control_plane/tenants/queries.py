"""Tenant reads (no writes): a tenant as the API shows it, and the row the commands load."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select

from control_plane.db.engine import Database
from control_plane.db.tables import tenants
from control_plane.errors import NotFound
from shared.wire import Tenant

_TENANT = select(tenants.c.tenant_id, tenants.c.name).where(
    tenants.c.tenant_id == bindparam("b_id")
)


@dataclass(frozen=True)
class TenantRecord:
    tenant_id: str
    name: str


def get_tenant(conn: Connection, tenant_id: str) -> TenantRecord | None:
    """The tenant, or ``None``."""
    row = conn.execute(_TENANT, {"b_id": tenant_id}).first()
    return TenantRecord(row.tenant_id, row.name) if row else None


def read_tenant(db: Database, tenant_id: str) -> Tenant:
    """The query behind ``GET /v1/tenants/me``: the tenant, or 404."""
    with db.engine.connect() as conn:
        record = get_tenant(conn, tenant_id)
    if record is None:
        raise NotFound("tenant not found")
    return Tenant(tenant_id=record.tenant_id, name=record.name)
