"""Tenant commands: create (the API key is returned once) and limits."""

from __future__ import annotations

from sqlalchemy import update

from control_plane.db.engine import Database
from control_plane.db.tables import tenants
from control_plane.db.uow import write_transaction
from control_plane.errors import NotFound
from control_plane.eventlog.emit import emit
from control_plane.ids import new_id, new_secret, token_hash
from control_plane.tenants.queries import TenantRecord
from shared.events import TenantCreated, TenantLimitsChanged
from shared.wire import TenantCreated as TenantCreatedReply


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


def register_tenant(db: Database, name: str) -> TenantCreatedReply:
    """The command behind ``POST /v1/tenants``: the new tenant and its API key (shown once)."""
    record, key = create_tenant(db, name)
    return TenantCreatedReply(tenant_id=record.tenant_id, name=record.name, api_key=key)


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
