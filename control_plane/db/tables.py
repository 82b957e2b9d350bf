"""Tables (SQLAlchemy Core). Times are integer microseconds since the epoch (``*_us``), money is
integer micro-dollars (``*_micros``): both compare and sum exactly on every backend.

``events`` is the append-only log; every other table is a projection that can be rebuilt
from it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("event_id", String(200), nullable=False, unique=True),
    Column("type", String(64), nullable=False),
    Column("tenant_id", String(64), nullable=True),
    Column("stream_id", String(200), nullable=False),
    Column("payload", Text, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("causation_id", String(200), nullable=True),
    Column("correlation_id", String(200), nullable=True),
)
Index("ix_events_tenant_seq", events.c.tenant_id, events.c.seq)
Index("ix_events_stream_seq", events.c.stream_id, events.c.seq)
Index("ix_events_type_seq", events.c.type, events.c.seq)

tenants = Table(
    "tenants",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("api_key_hash", String(64), nullable=False, unique=True),
    Column("created_at_us", BigInteger, nullable=False),
    # limits and budget (projections of tenant.limits.changed / billing.budget.set)
    Column("max_running", Integer, nullable=True),
    Column("submit_rate_per_s", Float, nullable=True),
    Column("submit_burst", Integer, nullable=True),
    Column("bucket_tokens", Float, nullable=True),
    Column("bucket_updated_us", BigInteger, nullable=True),
    Column("budget_micros", BigInteger, nullable=True),
    # estimated cost of this tenant's queued and running work (budget admission)
    Column("committed_micros", BigInteger, nullable=False, server_default="0"),
    # seq of the tenant's last workunit.scheduled: tenants take turns (fair share)
    Column("last_placed_seq", BigInteger, nullable=False, server_default="0"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("node_id", String(100), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("region", String(100), nullable=True),
    Column("supported_kinds", String(100), nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("running", Integer, nullable=False, server_default="0"),
    Column("labels", Text, nullable=False, server_default="{}"),
    Column("health", String(16), nullable=False, server_default="healthy"),
    Column("trust", Float, nullable=False, server_default="0.8"),
    Column("quarantined", Boolean, nullable=False, server_default="0"),
    Column("quarantined_at_us", BigInteger, nullable=True),
    Column("trust_reported", Float, nullable=True),
    Column("on_probation", Boolean, nullable=False, server_default="0"),
    Column("drained", Boolean, nullable=False, server_default="0"),
    Column("load", Float, nullable=True),
    Column("last_heartbeat_us", BigInteger, nullable=True),
    Column("registered_at_us", BigInteger, nullable=False),
)

work_units = Table(
    "work_units",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("execution_session_id", String(200), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("region", String(100), nullable=True),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("node_id", String(100), nullable=True),
    Column("result", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("submit_seq", BigInteger, nullable=False),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("claim_token", String(128), nullable=True),
    Column("lease_expires_us", BigInteger, nullable=True),
    Column("offered_to", Text, nullable=True),
    Column("est_cost_micros", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_work_units_idempotency"),
)
Index(
    "ix_work_units_queue",
    work_units.c.status,
    work_units.c.priority,
    work_units.c.tenant_id,
    work_units.c.kind,
    work_units.c.region,
    work_units.c.submit_seq,
)
Index("ix_work_units_tenant", work_units.c.tenant_id, work_units.c.status, work_units.c.id)
Index("ix_work_units_node", work_units.c.node_id, work_units.c.status)
Index("ix_work_units_lease", work_units.c.status, work_units.c.lease_expires_us)
Index("ix_work_units_session", work_units.c.execution_session_id, work_units.c.id)

# Offers: which nodes may claim a scheduled unit (the chosen node, or k with fan-out).
offers = Table(
    "offers",
    metadata,
    Column("node_id", String(100), primary_key=True),
    Column("work_unit_id", String(64), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("offered_seq", BigInteger, nullable=False),
)
Index("ix_offers_unit", offers.c.work_unit_id)

# Claims: one row per (unit, attempt) — the database refuses a second claim of an attempt.
claims = Table(
    "claims",
    metadata,
    Column("work_unit_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("node_id", String(100), nullable=False),
    Column("claim_token", String(128), nullable=False, unique=True),
    Column("claimed_at_us", BigInteger, nullable=False),
)

# Queued units by (priority, tenant, kind, region): drives fair placement and queue depth
# without scanning the queue.
queue_depth = Table(
    "queue_depth",
    metadata,
    Column("priority", Integer, primary_key=True),
    Column("tenant_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("region", String(100), primary_key=True),
    Column("queued", Integer, nullable=False),
)

# Accepted LLM invocations: one row per (unit, invocation_id) — the database enforces it.
llm_invocations = Table(
    "llm_invocations",
    metadata,
    Column("work_unit_id", String(64), primary_key=True),
    Column("invocation_id", String(200), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("stale", Boolean, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

# Single-row tables hold cluster-wide state (id = 1).
capacity_state = Table(
    "capacity_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mode", String(16), nullable=False),
    Column("mode_since_us", BigInteger, nullable=False),
    Column("override_until_us", BigInteger, nullable=True),
    Column("override_active", Boolean, nullable=False, server_default="0"),
    Column("desired_nodes", Integer, nullable=False, server_default="0"),
    Column("last_decision", Text, nullable=True),
    Column("controller_state", Text, nullable=True),
)

# Leader leases for background loops that must run on one replica at a time.
leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_us", BigInteger, nullable=False),
)

# Billing projections (the price table and policy are folded from billing.* events).
prices = Table(
    "prices",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("usd_per_1m_in", String(40), nullable=False),
    Column("usd_per_1m_out", String(40), nullable=False),
    Column("price_version", Integer, nullable=False),
)

billing_policy = Table(
    "billing_policy",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("bill_llm_from_workunit_completed", Boolean, nullable=False),
    Column("bill_llm_from_invocation", Boolean, nullable=False),
    Column("usd_per_cpu_s", String(40), nullable=False),
    Column("price_version", Integer, nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", String(128), primary_key=True),
    Column("source_event_id", String(200), nullable=False),
    Column("source_seq", BigInteger, nullable=False),
    Column("line_item_type", String(32), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("work_unit_id", String(64), nullable=False),
    Column("execution_session_id", String(200), nullable=False),
    Column("quantity", String(40), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("pricing", Text, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("sub_key", String(32), nullable=False, server_default=""),
    UniqueConstraint("source_event_id", "line_item_type", "sub_key", name="uq_ledger_source"),
)
Index("ix_ledger_tenant_seq", ledger_entries.c.tenant_id, ledger_entries.c.source_seq)
Index("ix_ledger_seq", ledger_entries.c.source_seq)

wallets = Table(
    "wallets",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("cpu_micros", BigInteger, nullable=False),
    Column("llm_micros", BigInteger, nullable=False),
    Column("as_of_seq", BigInteger, nullable=False),
)

wallet_snapshots = Table(
    "wallet_snapshots",
    metadata,
    Column("as_of_seq", BigInteger, primary_key=True),
    Column("state", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)
