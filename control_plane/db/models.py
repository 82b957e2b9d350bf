"""The tables, declared as SQLModel models: one class per table, all on one ``metadata``.

Times are integer microseconds since the epoch (``*_us``), money is integer micro-dollars
(``*_micros``): both compare and sum exactly on every backend. ``EventRow`` is the append-only
log; every other table is a projection that can be rebuilt from it, or bookkeeping the control
plane keeps beside it (checkpoints, leader leases, rate buckets).

These classes are the schema, not an API: the commands read and write through SQLAlchemy Core on
their ``__table__`` (``control_plane.db.tables`` exposes them by table name), never through ORM
sessions, and the wire models in ``shared/`` stay separate (the agent must not import
SQLAlchemy). Nullability follows the annotation (``X | None`` is NULL-able); every column's SQL
type is given explicitly so that the Alembic history (``migrations/``) matches these models
exactly on SQLite and PostgreSQL. Columns with a server default carry no Python-side default, so
Core INSERTs bind exactly the columns they name.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class TableModel(SQLModel, registry=registry(metadata=metadata)):
    """Base of the table models: puts them on this module's ``metadata`` (and its naming
    convention) instead of SQLModel's process-wide default one."""


class EventRow(TableModel, table=True):
    """The event log itself (append-only): every event, in ``seq`` order. Appending an
    ``event_id`` again is a no-op that returns the stored event."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_seq", "tenant_id", "seq"),
        Index("ix_events_stream_seq", "stream_id", "seq"),
        Index("ix_events_type_seq", "type", "seq"),
    )

    seq: int | None = Field(
        default=None, primary_key=True, sa_type=SeqType, sa_column_kwargs={"autoincrement": True}
    )
    event_id: str = Field(sa_type=String(200), unique=True)
    type: str = Field(sa_type=String(64))
    tenant_id: str | None = Field(sa_type=String(64))
    stream_id: str = Field(sa_type=String(200))
    payload: str = Field(sa_type=Text)
    recorded_at_us: int = Field(sa_type=BigInteger)
    causation_id: str | None = Field(sa_type=String(200))
    correlation_id: str | None = Field(sa_type=String(200))


class TenantRow(TableModel, table=True):
    """Tenants: a projection of ``tenant.created``, ``tenant.limits.changed`` and
    ``billing.budget.set``, plus what the log never holds (the API key's hash) and the
    admission bookkeeping kept in the commands' transactions (submit rate bucket, the estimated
    cost of queued and running work, the fair-share turn)."""

    __tablename__ = "tenants"

    tenant_id: str = Field(primary_key=True, sa_type=String(64))
    name: str = Field(sa_type=String(200))
    api_key_hash: str = Field(sa_type=String(64), unique=True)
    created_at_us: int = Field(sa_type=BigInteger)
    # limits and budget (projections of tenant.limits.changed / billing.budget.set)
    max_running: int | None = Field(sa_type=Integer)
    submit_rate_per_s: float | None = Field(sa_type=Float)
    submit_burst: int | None = Field(sa_type=Integer)
    bucket_tokens: float | None = Field(sa_type=Float)
    bucket_updated_us: int | None = Field(sa_type=BigInteger)
    budget_micros: int | None = Field(sa_type=BigInteger)
    # estimated cost of this tenant's queued and running work (budget admission)
    committed_micros: int = Field(sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})
    # seq of the tenant's last workunit.scheduled: tenants take turns (fair share)
    last_placed_seq: int = Field(sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})


class NodeRow(TableModel, table=True):
    """The node registry: a projection of ``node.registered``, ``node.drained``,
    ``node.health.changed`` and ``trust.score.changed`` (score, quarantine, probation, the last
    score reported in an event), with the running count kept by the unit lifecycle and the last
    heartbeat's time and load."""

    __tablename__ = "nodes"

    node_id: str = Field(primary_key=True, sa_type=String(100))
    token_hash: str = Field(sa_type=String(64), unique=True)
    region: str | None = Field(sa_type=String(100))
    supported_kinds: str = Field(sa_type=String(100))
    max_concurrency: int = Field(sa_type=Integer)
    running: int = Field(sa_type=Integer, sa_column_kwargs={"server_default": "0"})
    labels: str = Field(sa_type=Text, sa_column_kwargs={"server_default": "{}"})
    health: str = Field(sa_type=String(16), sa_column_kwargs={"server_default": "healthy"})
    trust: float = Field(sa_type=Float, sa_column_kwargs={"server_default": "0.8"})
    quarantined: bool = Field(sa_type=Boolean, sa_column_kwargs={"server_default": "0"})
    quarantined_at_us: int | None = Field(sa_type=BigInteger)
    trust_reported: float | None = Field(sa_type=Float)
    on_probation: bool = Field(sa_type=Boolean, sa_column_kwargs={"server_default": "0"})
    drained: bool = Field(sa_type=Boolean, sa_column_kwargs={"server_default": "0"})
    load: float | None = Field(sa_type=Float)
    last_heartbeat_us: int | None = Field(sa_type=BigInteger)
    registered_at_us: int = Field(sa_type=BigInteger)


class WorkUnitRow(TableModel, table=True):
    """The work-unit aggregate: a projection of the ``workunit.*`` events (submitted,
    scheduled, unscheduled, claimed, leases renewed, completed, failed, lease expired,
    cancelled), written only by ``units.lifecycle`` in the same transaction as the event."""

    __tablename__ = "work_units"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_work_units_idempotency"),
        Index(
            "ix_work_units_queue",
            "status",
            "priority",
            "tenant_id",
            "kind",
            "region",
            "submit_seq",
        ),
        Index("ix_work_units_tenant", "tenant_id", "status", "id"),
        Index("ix_work_units_node", "node_id", "status"),
        Index("ix_work_units_lease", "status", "lease_expires_us"),
        Index("ix_work_units_session", "execution_session_id", "id"),
    )

    id: str = Field(primary_key=True, sa_type=String(64))
    tenant_id: str = Field(sa_type=String(64))
    kind: str = Field(sa_type=String(16))
    execution_session_id: str = Field(sa_type=String(200))
    priority: int = Field(sa_type=Integer)
    region: str | None = Field(sa_type=String(100))
    payload: str = Field(sa_type=Text)
    status: str = Field(sa_type=String(16))
    attempt: int = Field(sa_type=Integer)
    max_attempts: int = Field(sa_type=Integer)
    node_id: str | None = Field(sa_type=String(100))
    result: str | None = Field(sa_type=Text)
    error: str | None = Field(sa_type=Text)
    created_at_us: int = Field(sa_type=BigInteger)
    updated_at_us: int = Field(sa_type=BigInteger)
    submit_seq: int = Field(sa_type=BigInteger)
    idempotency_key: str | None = Field(sa_type=String(200))
    request_hash: str | None = Field(sa_type=String(64))
    claim_token: str | None = Field(sa_type=String(128))
    lease_expires_us: int | None = Field(sa_type=BigInteger)
    offered_to: str | None = Field(sa_type=Text)
    est_cost_micros: int = Field(sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})


class OfferRow(TableModel, table=True):
    """Offers: which nodes may claim a scheduled unit (the chosen node, or k with fan-out); a
    projection of ``workunit.scheduled``, removed by the claim, ``workunit.unscheduled`` and the
    unit's terminal events."""

    __tablename__ = "offers"
    __table_args__ = (Index("ix_offers_unit", "work_unit_id"),)

    node_id: str = Field(primary_key=True, sa_type=String(100))
    work_unit_id: str = Field(primary_key=True, sa_type=String(64))
    attempt: int = Field(sa_type=Integer)
    offered_seq: int = Field(sa_type=BigInteger)


class ClaimRow(TableModel, table=True):
    """Claims: a projection of ``workunit.claimed``, one row per (unit, attempt), so the
    database itself refuses a second claim of an attempt."""

    __tablename__ = "claims"

    work_unit_id: str = Field(primary_key=True, sa_type=String(64))
    attempt: int = Field(primary_key=True, sa_type=Integer)
    node_id: str = Field(sa_type=String(100))
    claim_token: str = Field(sa_type=String(128), unique=True)
    claimed_at_us: int = Field(sa_type=BigInteger)


class QueueDepthRow(TableModel, table=True):
    """Queued units counted by (priority, tenant, kind, region): a projection of every status
    change into or out of ``queued``; drives fair placement and queue depth without scanning
    the queue."""

    __tablename__ = "queue_depth"

    priority: int = Field(primary_key=True, sa_type=Integer)
    tenant_id: str = Field(primary_key=True, sa_type=String(64))
    kind: str = Field(primary_key=True, sa_type=String(16))
    region: str = Field(primary_key=True, sa_type=String(100))
    queued: int = Field(sa_type=Integer)


class LlmInvocationRow(TableModel, table=True):
    """Accepted LLM invocations: a projection of ``llm.invocation.completed``, one row per
    (unit, invocation_id), so the database refuses a second report of one invocation."""

    __tablename__ = "llm_invocations"

    work_unit_id: str = Field(primary_key=True, sa_type=String(64))
    invocation_id: str = Field(primary_key=True, sa_type=String(200))
    attempt: int = Field(sa_type=Integer)
    request_hash: str = Field(sa_type=String(64))
    seq: int = Field(sa_type=BigInteger)
    stale: bool = Field(sa_type=Boolean)


class CheckpointRow(TableModel, table=True):
    """Consumer positions: the last ``seq`` each consumer folded, written in the same
    transaction as that consumer's output."""

    __tablename__ = "checkpoints"

    name: str = Field(primary_key=True, sa_type=String(100))
    last_seq: int = Field(sa_type=BigInteger)
    updated_at_us: int = Field(sa_type=BigInteger)


class CapacityStateRow(TableModel, table=True):
    """Cluster-wide capacity state (a single row, id = 1): a projection of
    ``capacity.admission.mode.changed``, ``capacity.override.set``,
    ``capacity.override.cleared`` and
    ``capacity.scale.requested``, with the autoscaler's last decision and controller state."""

    __tablename__ = "capacity_state"

    id: int = Field(primary_key=True, sa_type=Integer)
    mode: str = Field(sa_type=String(16))
    mode_since_us: int = Field(sa_type=BigInteger)
    override_until_us: int | None = Field(sa_type=BigInteger)
    override_active: bool = Field(sa_type=Boolean, sa_column_kwargs={"server_default": "0"})
    desired_nodes: int = Field(sa_type=Integer, sa_column_kwargs={"server_default": "0"})
    last_decision: str | None = Field(sa_type=Text)
    controller_state: str | None = Field(sa_type=Text)


class LeaseRow(TableModel, table=True):
    """Leader leases for background loops that must run on one replica at a time; coordination
    state, not a projection of the log."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, sa_type=String(100))
    holder: str = Field(sa_type=String(200))
    expires_us: int = Field(sa_type=BigInteger)


class PriceRow(TableModel, table=True):
    """The control plane's token price table, one row per model: a projection of
    ``billing.price.changed`` (replay never reads it: it reads the prices stamped in events)."""

    __tablename__ = "prices"

    model: str = Field(primary_key=True, sa_type=String(200))
    usd_per_1m_in: str = Field(sa_type=String(40))
    usd_per_1m_out: str = Field(sa_type=String(40))
    price_version: int = Field(sa_type=Integer)


class BillingPolicyRow(TableModel, table=True):
    """The billing flags and CPU rate in force (a single row, id = 1): a projection of
    ``billing.policy.changed``."""

    __tablename__ = "billing_policy"

    id: int = Field(primary_key=True, sa_type=Integer)
    bill_llm_from_workunit_completed: bool = Field(sa_type=Boolean)
    bill_llm_from_invocation: bool = Field(sa_type=Boolean)
    usd_per_cpu_s: str = Field(sa_type=String(40))
    price_version: int = Field(sa_type=Integer)


class LedgerEntryRow(TableModel, table=True):
    """The ledger (append-only): the billing consumer's projection of ``workunit.completed``
    and ``llm.invocation.completed``, one line per (source event, line-item type, sub key), so
    re-delivery and concurrent consumers never bill twice."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("source_event_id", "line_item_type", "sub_key", name="uq_ledger_source"),
        Index("ix_ledger_tenant_seq", "tenant_id", "source_seq"),
        Index("ix_ledger_seq", "source_seq"),
    )

    entry_id: str = Field(primary_key=True, sa_type=String(128))
    source_event_id: str = Field(sa_type=String(200))
    source_seq: int = Field(sa_type=BigInteger)
    line_item_type: str = Field(sa_type=String(32))
    tenant_id: str = Field(sa_type=String(64))
    work_unit_id: str = Field(sa_type=String(64))
    execution_session_id: str = Field(sa_type=String(200))
    quantity: str = Field(sa_type=String(40))
    unit: str = Field(sa_type=String(16))
    pricing: str = Field(sa_type=Text)
    amount_micros: int = Field(sa_type=BigInteger)
    recorded_at_us: int = Field(sa_type=BigInteger)
    sub_key: str = Field(sa_type=String(32), sa_column_kwargs={"server_default": ""})


class WalletRow(TableModel, table=True):
    """Wallets, one per tenant: the billing consumer's running totals of the ledger by
    line-item type, current to ``as_of_seq``."""

    __tablename__ = "wallets"

    tenant_id: str = Field(primary_key=True, sa_type=String(64))
    cpu_micros: int = Field(sa_type=BigInteger)
    llm_micros: int = Field(sa_type=BigInteger)
    as_of_seq: int = Field(sa_type=BigInteger)


class WalletSnapshotRow(TableModel, table=True):
    """Wallet snapshots: every wallet and the policy in force as of a billing-consumer
    checkpoint (canonical JSON), so replay can start from one instead of from seq 0."""

    __tablename__ = "wallet_snapshots"

    as_of_seq: int = Field(primary_key=True, sa_type=BigInteger)
    state: str = Field(sa_type=Text)
    created_at_us: int = Field(sa_type=BigInteger)
