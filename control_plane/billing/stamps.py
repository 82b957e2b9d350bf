"""The prices the control plane stamps into billable events, read from its price table (the
``prices`` and ``billing_policy`` projections, themselves folded from ``billing.*`` events).

Replay never reads these tables: it reads the stamps in the events.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from control_plane.db.tables import billing_policy, prices
from shared.events import CpuPricing, TokenPricing

DEFAULT_MODEL_KEY = "default"


class PricingMissing(RuntimeError):
    """The price table was never initialised (the app seeds it on start)."""


def cpu_pricing(conn: Connection) -> CpuPricing:
    row = conn.execute(
        select(billing_policy.c.usd_per_cpu_s, billing_policy.c.price_version).where(
            billing_policy.c.id == 1
        )
    ).first()
    if row is None:
        raise PricingMissing("billing policy not initialised")
    return CpuPricing(usd_per_cpu_s=row.usd_per_cpu_s, price_version=row.price_version)


def token_pricing(conn: Connection, model: str) -> TokenPricing:
    """The model's rates, or the ``default`` row's rates for a model the table does not know."""
    rows = {
        r.model: r
        for r in conn.execute(select(prices).where(prices.c.model.in_([model, DEFAULT_MODEL_KEY])))
    }
    row = rows.get(model) or rows.get(DEFAULT_MODEL_KEY)
    if row is None:
        raise PricingMissing(f"no price for model {model!r} and no default price")
    return TokenPricing(
        model=model,
        usd_per_1m_in=row.usd_per_1m_in,
        usd_per_1m_out=row.usd_per_1m_out,
        price_version=row.price_version,
    )


def bill_llm_from_completion(conn: Connection) -> bool:
    value = conn.execute(
        select(billing_policy.c.bill_llm_from_workunit_completed).where(billing_policy.c.id == 1)
    ).scalar()
    return bool(value)
