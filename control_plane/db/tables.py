"""The tables by name, for SQLAlchemy Core statements: each is the ``__table__`` of its SQLModel
model in ``control_plane.db.models`` (where the columns, constraints and indexes are declared),
all on one ``metadata``.

``events`` is the append-only log; every other table is a projection that can be rebuilt
from it. Commands build Core statements on these (``select(work_units)``,
``insert(events)``...): the hot paths never go through ORM sessions.
"""

from __future__ import annotations

from sqlalchemy import Table, inspect
from sqlmodel import SQLModel

from control_plane.db.models import (
    BillingPolicyRow,
    CapacityStateRow,
    CheckpointRow,
    ClaimRow,
    EventRow,
    LeaseRow,
    LedgerEntryRow,
    LlmInvocationRow,
    NodeRow,
    OfferRow,
    PriceRow,
    QueueDepthRow,
    TenantRow,
    WalletRow,
    WalletSnapshotRow,
    WorkUnitRow,
    metadata,
)


def _table(model: type[SQLModel]) -> Table:
    """The model's ``__table__``, typed (SQLModel does not declare the attribute)."""
    table = inspect(model).local_table
    assert isinstance(table, Table)
    return table


events = _table(EventRow)
tenants = _table(TenantRow)
nodes = _table(NodeRow)
work_units = _table(WorkUnitRow)
offers = _table(OfferRow)
claims = _table(ClaimRow)
queue_depth = _table(QueueDepthRow)
llm_invocations = _table(LlmInvocationRow)
checkpoints = _table(CheckpointRow)
capacity_state = _table(CapacityStateRow)
leases = _table(LeaseRow)
prices = _table(PriceRow)
billing_policy = _table(BillingPolicyRow)
ledger_entries = _table(LedgerEntryRow)
wallets = _table(WalletRow)
wallet_snapshots = _table(WalletSnapshotRow)

__all__ = [
    "billing_policy",
    "capacity_state",
    "checkpoints",
    "claims",
    "events",
    "leases",
    "ledger_entries",
    "llm_invocations",
    "metadata",
    "nodes",
    "offers",
    "prices",
    "queue_depth",
    "tenants",
    "wallet_snapshots",
    "wallets",
    "work_units",
]
