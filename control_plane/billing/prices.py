"""The control plane's price table in the database (the ``prices`` and ``billing_policy``
projections, folded from ``billing.*`` events) and the stamps it puts into billable events.

Replay never reads these tables: it reads the stamps in the events.

The table last read is cached on the ``Database`` (``Database.price_table``) under the key
that identifies its version, so a hit saves reading and parsing every price row. Commands
reach it through their unit of work; reads pass the database.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Connection, delete, func, select

from control_plane.billing.domain.policy import BillingPolicy, policy_changed_payload
from control_plane.billing.domain.pricing import (
    ModelPrice,
    PriceTable,
    default_price_table,
    price_changed_payload,
    rate,
    rate_str,
)
from control_plane.billing.domain.pricing import cpu_stamp as _cpu_stamp
from control_plane.billing.domain.pricing import token_stamp as _token_stamp
from control_plane.db.engine import CacheSlot, Database
from control_plane.db.tables import billing_policy, prices
from control_plane.db.uow import UnitOfWork, write_transaction
from control_plane.eventlog.emit import emit, emit_all, event
from shared.events import BillingPolicyChanged, BillingPriceChanged, CpuPricing, TokenPricing
from shared.wire import PriceTableReply


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


def load_table(conn: Connection, cache: CacheSlot | None = None) -> PriceTable:
    """The price table in force, as ``conn`` sees it (from ``cache`` when its key still
    matches; ``cache`` then holds the table read)."""
    key_row = conn.execute(_TABLE_KEY).first()
    if key_row is None or key_row[2] is None:
        raise PricingMissing("billing policy and prices not initialised")
    key = tuple(key_row)
    if cache is not None:
        cached = cache.get(key)
        if isinstance(cached, PriceTable):
            return cached
    policy = conn.execute(_POLICY).first()
    rows = conn.execute(_PRICES).all()
    if policy is None or not rows:
        raise PricingMissing("billing policy and prices not initialised")
    version = max([policy.price_version, *(r.price_version for r in rows)])
    models = {r.model: ModelPrice(rate(r.usd_per_1m_in), rate(r.usd_per_1m_out)) for r in rows}
    table = PriceTable(version, rate(policy.usd_per_cpu_s), models)
    if cache is not None:
        cache.put(key, table)
    return table


def table_in(uow: UnitOfWork) -> PriceTable:
    """The price table in force inside a command (cached on its database)."""
    return load_table(uow.conn, uow.db.price_table)


def load_policy(conn: Connection) -> BillingPolicy:
    row = conn.execute(_POLICY).first()
    if row is None:
        return BillingPolicy()
    return BillingPolicy(
        bool(row.bill_llm_from_workunit_completed), bool(row.bill_llm_from_invocation)
    )


def cpu_pricing(uow: UnitOfWork) -> CpuPricing:
    """The CPU stamp a ``workunit.completed`` appended by ``uow`` carries."""
    return CpuPricing.model_validate(_cpu_stamp(table_in(uow)))


def token_pricing(uow: UnitOfWork, model: str) -> TokenPricing:
    """The token stamp of ``model`` for an event appended by ``uow``."""
    return TokenPricing.model_validate(_token_stamp(table_in(uow), model))


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
        table = table_in(uow)
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
    table = table_in(uow).with_model_price(model, usd_per_1m_in, usd_per_1m_out)
    set_model_price(uow, table, model)
    return table


def set_price(
    db: Database, model: str, usd_per_1m_in: Decimal, usd_per_1m_out: Decimal
) -> PriceTableReply:
    """The command behind ``PUT /v1/billing/prices/{model}``: a new price version (and its
    ``billing.price.changed`` event); returns the table now in force."""
    with write_transaction(db) as uow:
        table = change_model_price(uow, model, usd_per_1m_in, usd_per_1m_out)
    return table_reply(table)


def price_table(db: Database) -> PriceTableReply:
    """The query behind ``GET /v1/billing/prices``: the table in force."""
    with db.engine.connect() as conn:
        table = load_table(conn, db.price_table)
    return table_reply(table)


def table_reply(table: PriceTable) -> PriceTableReply:
    """The wire form of ``table``: rates as fixed-decimal strings, models by name."""
    return PriceTableReply(
        price_version=table.price_version,
        usd_per_cpu_s=rate_str(table.usd_per_cpu_s),
        models={
            m: {
                "usd_per_1m_in": rate_str(p.usd_per_1m_in),
                "usd_per_1m_out": rate_str(p.usd_per_1m_out),
            }
            for m, p in sorted(table.models.items())
        },
    )
