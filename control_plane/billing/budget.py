"""Budgets: an admin sets a tenant's budget; a submission that would take the tenant's spend
plus the estimated cost of its queued and running work past the budget is refused with 402
``budget_exhausted`` and a ``billing.budget.refused`` event that explains the refusal.

Exact across replicas: the check runs inside the submit transaction (writers are serialized),
after folding the billing consumer up to the head of the log in that same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update

from control_plane.billing.consumer import catch_up_in
from control_plane.billing.domain.estimates import budget_check, estimate_unit_cost
from control_plane.billing.ledger import spent_micros
from control_plane.billing.prices import table_in
from control_plane.db.engine import Database
from control_plane.db.tables import tenants
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.errors import BudgetExhausted, KrakoError, NotFound
from control_plane.eventlog.emit import emit
from shared.events import BillingBudgetRefused, BillingBudgetSet
from shared.money import format_usd, from_micros, to_micros
from shared.wire import BudgetReply

_BUDGET_ROW = select(tenants.c.budget_micros, tenants.c.committed_micros).where(
    tenants.c.tenant_id == bindparam("b_tenant")
)
_COMMITTED = select(tenants.c.committed_micros).where(tenants.c.tenant_id == bindparam("b_tenant"))
_ADD_COMMITTED = (
    update(tenants)
    .where(tenants.c.tenant_id == bindparam("b_tenant"))
    .values(committed_micros=tenants.c.committed_micros + bindparam("b_add"))
)


def budget_hook(uow: UnitOfWork, tenant_id: str, fresh: Sequence[Any]) -> None:
    """Estimate each new unit's cost and check the tenant's budget (raises 402)."""
    row = uow.conn.execute(_BUDGET_ROW, {"b_tenant": tenant_id}).first()
    if row is None:
        return
    table = table_in(uow)
    total = 0
    for acc in fresh:
        acc.est_cost_micros = to_micros(estimate_unit_cost(acc.item.kind, acc.payload, table))
        total += acc.est_cost_micros
    if row.budget_micros is not None:
        catch_up_in(uow)
        committed = int(uow.conn.execute(_COMMITTED, {"b_tenant": tenant_id}).scalar_one())
        spent = spent_micros(uow.conn, tenant_id)
        budget = from_micros(row.budget_micros)
        if not budget_check(budget, from_micros(spent), from_micros(committed), from_micros(total)):
            raise BudgetExhausted(
                f"tenant {tenant_id} budget {format_usd(budget)} USD: spent "
                f"{format_usd(from_micros(spent))} + committed {format_usd(from_micros(committed))}"
                f" + requested {format_usd(from_micros(total))} would exceed it",
                extra={
                    "budget_usd": format_usd(budget),
                    "spent_usd": format_usd(from_micros(spent)),
                    "committed_usd": format_usd(from_micros(committed)),
                    "requested_usd": format_usd(from_micros(total)),
                },
            )
    uow.conn.execute(_ADD_COMMITTED, {"b_tenant": tenant_id, "b_add": total})


def record_refusal(uow: UnitOfWork, tenant_id: str, exc: KrakoError) -> None:
    """The refusal itself is an event, so every refusal is explainable from the log."""
    emit(
        uow,
        BillingBudgetRefused(tenant_id=tenant_id, **exc.extra),
        stream_id=tenant_id,
        tenant_id=tenant_id,
    )


def set_budget(db: Database, tenant_id: str, budget: Decimal | None) -> BudgetReply:
    with write_transaction(db) as uow:
        micros = to_micros(budget) if budget is not None else None
        result = uow.conn.execute(
            update(tenants).where(tenants.c.tenant_id == tenant_id).values(budget_micros=micros)
        )
        if result.rowcount == 0:
            raise NotFound(f"tenant {tenant_id} not found")
        emit(
            uow,
            BillingBudgetSet(
                tenant_id=tenant_id,
                budget_usd=format_usd(budget) if budget is not None else None,
            ),
            stream_id=tenant_id,
            tenant_id=tenant_id,
        )
        catch_up_in(uow)
        committed = uow.conn.execute(
            select(tenants.c.committed_micros).where(tenants.c.tenant_id == tenant_id)
        ).scalar_one()
        return BudgetReply(
            tenant_id=tenant_id,
            budget_usd=budget,
            spent_usd=from_micros(spent_micros(uow.conn, tenant_id)),
            committed_usd=from_micros(int(committed)),
        )
