"""Tenant commands (create, limits) and the token lookups behind authentication."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, tenants
from control_plane.db.uow import write_transaction
from control_plane.errors import NotFound
from control_plane.eventlog.emit import emit
from control_plane.ids import new_id, new_secret, token_hash
from shared.events import TenantCreated, TenantLimitsChanged


@dataclass(frozen=True)
class TenantRecord:
    tenant_id: str
    name: str


def create_tenant(db: Database, name: str) -> tuple[TenantRecord, str]:
    """Create a tenant; returns it and its API key (the key is stored only as a hash)."""
    tenant_id = new_id("ten")
    api_key = new_secret("kt")
    with write_transaction(db) as uow:
        uow.conn.execute(
            tenants.insert().values(
                tenant_id=tenant_id,
                name=name,
                api_key_hash=token_hash(api_key),
                created_at_us=uow.now_us,
            )
        )
        emit(
            uow,
            TenantCreated(tenant_id=tenant_id, name=name),
            stream_id=tenant_id,
            tenant_id=tenant_id,
            event_id=f"{tenant_id}/created",
        )
    return TenantRecord(tenant_id, name), api_key


def get_tenant(conn: Connection, tenant_id: str) -> TenantRecord | None:
    row = conn.execute(
        select(tenants.c.tenant_id, tenants.c.name).where(tenants.c.tenant_id == tenant_id)
    ).first()
    return TenantRecord(row.tenant_id, row.name) if row else None


def tenant_by_key_hash(conn: Connection, digest: str) -> str | None:
    value = conn.execute(
        select(tenants.c.tenant_id).where(tenants.c.api_key_hash == digest)
    ).scalar()
    return str(value) if value is not None else None


def node_by_token_hash(conn: Connection, digest: str) -> str | None:
    value = conn.execute(select(nodes.c.node_id).where(nodes.c.token_hash == digest)).scalar()
    return str(value) if value is not None else None


def set_limits(
    db: Database,
    tenant_id: str,
    max_running: int | None,
    submit_rate_per_s: float | None,
    submit_burst: int | None,
) -> None:
    with write_transaction(db) as uow:
        result = uow.conn.execute(
            update(tenants)
            .where(tenants.c.tenant_id == tenant_id)
            .values(
                max_running=max_running,
                submit_rate_per_s=submit_rate_per_s,
                submit_burst=submit_burst,
                bucket_tokens=None,
                bucket_updated_us=None,
            )
        )
        if result.rowcount == 0:
            raise NotFound(f"tenant {tenant_id} not found")
        emit(
            uow,
            TenantLimitsChanged(
                tenant_id=tenant_id,
                max_running=max_running,
                submit_rate_per_s=submit_rate_per_s,
                submit_burst=submit_burst,
            ),
            stream_id=tenant_id,
            tenant_id=tenant_id,
        )
        uow.wake("queue")
