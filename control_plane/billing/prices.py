"""The control plane's price table in the database (the ``prices`` and ``billing_policy``
projections, folded from ``billing.*`` events) and the stamps it puts into billable events.

Replay never reads these tables: it reads the stamps in the events.
"""

from __future__ import annotations

import weakref
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from control_plane.billing.domain.policy import BillingPolicy, policy_changed_payload
from control_plane.billing.domain.pricing import (
    PriceTable,
    default_price_table,
    price_changed_payload,
    rate,
)
from control_plane.billing.domain.pricing import cpu_stamp as _cpu_stamp
from control_plane.billing.domain.pricing import token_stamp as _token_stamp
from control_plane.db.tables import billing_policy, prices
from control_plane.db.uow import UnitOfWork
from control_plane.eventlog.emit import emit, emit_all, event
from shared.events import BillingPolicyChanged, BillingPriceChanged, CpuPricing, TokenPricing


class PricingMissing(RuntimeError):
    """The price table was never initialised (the control plane seeds it on start)."""


_POLICY = select(billing_policy).where(billing_policy.c.id == 1)
_PRICES = select(prices)
# The policy row and the newest price row's version, in one statement: every price change
# writes a higher version, so equal keys mean an unchanged table (and the cached one stands).
_TABLE_KEY = select(
    billing_policy.c.price_version,
    billing_policy.c.usd_per_cpu_s,
    select(func.max(prices.c.price_version)).scalar_subquery(),
).where(billing_policy.c.id == 1)

# Per engine (weakly held, so a disposed database's entry goes with it): the table last read
# and the key it was read under. A hit saves reading and parsing every price row.
_tables: weakref.WeakKeyDictionary[Engine, tuple[tuple[Any, ...], PriceTable]] = (
    weakref.WeakKeyDictionary()
)


def load_table(conn: Connection) -> PriceTable:
    key_row = conn.execute(_TABLE_KEY).first()
    if key_row is None or key_row[2] is None:
        raise PricingMissing("billing policy and prices not initialised")
    key = tuple(key_row)
    cached = _tables.get(conn.engine)
    if cached is not None and cached[0] == key:
        return cached[1]
    policy = conn.execute(_POLICY).first()
    rows = conn.execute(_PRICES).all()
    if policy is None or not rows:
        raise PricingMissing("billing policy and prices not initialised")
    from control_plane.billing.domain.pricing import ModelPrice

    version = max([policy.price_version, *(r.price_version for r in rows)])
    models = {r.model: ModelPrice(rate(r.usd_per_1m_in), rate(r.usd_per_1m_out)) for r in rows}
    table = PriceTable(version, rate(policy.usd_per_cpu_s), models)
    _tables[conn.engine] = (key, table)
    return table


def load_policy(conn: Connection) -> BillingPolicy:
    row = conn.execute(_POLICY).first()
    if row is None:
        return BillingPolicy()
    return BillingPolicy(
        bool(row.bill_llm_from_workunit_completed), bool(row.bill_llm_from_invocation)
    )


def cpu_pricing(conn: Connection) -> CpuPricing:
    return CpuPricing.model_validate(_cpu_stamp(load_table(conn)))


def token_pricing(conn: Connection, model: str) -> TokenPricing:
    return TokenPricing.model_validate(_token_stamp(load_table(conn), model))


def bill_llm_from_completion(conn: Connection) -> bool:
    return load_policy(conn).bill_llm_from_workunit_completed


def _write_policy(uow: UnitOfWork, policy: BillingPolicy, table: PriceTable) -> None:
    payload = policy_changed_payload(policy, table)
    uow.conn.execute(delete(billing_policy))
    uow.conn.execute(billing_policy.insert().values(id=1, **payload))
    emit(uow, BillingPolicyChanged.model_validate(payload), stream_id="billing")


def set_model_price(uow: UnitOfWork, table: PriceTable, model: str) -> None:
    payload = price_changed_payload(table, model)
    uow.conn.execute(delete(prices).where(prices.c.model == model))
    uow.conn.execute(prices.insert().values(**payload))
    emit(uow, BillingPriceChanged.model_validate(payload), stream_id="billing")


def _seed_prices(uow: UnitOfWork, table: PriceTable) -> None:
    """Every model of ``table`` as a price row and a ``billing.price.changed`` event, in name
    order, with one statement for the rows and one append for the events."""
    names = sorted(table.models)
    payloads = [price_changed_payload(table, model) for model in names]
    uow.conn.execute(delete(prices).where(prices.c.model.in_(names)))
    uow.conn.execute(prices.insert(), payloads)
    emit_all(
        uow,
        [event(BillingPriceChanged.model_validate(p), stream_id="billing") for p in payloads],
    )


def ensure_billing(
    uow: UnitOfWork, from_completed: bool, from_invocation: bool, usd_per_cpu_s: Decimal
) -> None:
    """At start: seed the price table (version 1, ``shared.prices``'s default prices) if the
    log has none, and record the billing flags and CPU rate in force when they differ from what
    the log says."""
    wanted = BillingPolicy(from_completed, from_invocation)
    try:
        table = load_table(uow.conn)
    except PricingMissing:
        table = default_price_table(usd_per_cpu_s)
        _seed_prices(uow, table)
        _write_policy(uow, wanted, table)
        return
    current = load_policy(uow.conn)
    if current != wanted or table.usd_per_cpu_s != rate(usd_per_cpu_s):
        _write_policy(uow, wanted, table.with_cpu_rate(usd_per_cpu_s))


def change_model_price(
    uow: UnitOfWork, model: str, usd_per_1m_in: Decimal, usd_per_1m_out: Decimal
) -> PriceTable:
    table = load_table(uow.conn).with_model_price(model, usd_per_1m_in, usd_per_1m_out)
    set_model_price(uow, table, model)
    return table
