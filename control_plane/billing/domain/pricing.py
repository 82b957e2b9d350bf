"""The control plane's versioned price table, and the pricing stamps it puts into events.

Prices are the control plane's, never the agent's. When the control plane appends a billable
event it stamps the prices in force into the payload (``cpu_stamp`` for ``workunit.completed``,
``token_stamp`` for ``llm.invocation.completed``), so projection never reads a price from
anywhere but the event (DESIGN.md, invariant 3).

Rates are ``Decimal`` and travel as decimal strings in their shortest exact form
(``Decimal("0.000050")`` becomes ``"0.00005"``, like ``shared.money.Rate``); floats are refused.
Token rates are USD per one million tokens; the CPU rate is USD per CPU second.

Every change makes a new table with ``price_version`` one higher, so a stamp's version names
exactly one set of prices. The control plane records a change in the log with the payloads of
``price_changed_payload`` (``billing.price.changed``) and ``policy.policy_changed_payload``
(``billing.policy.changed``); ``apply_price_event`` folds those events back into a table, so the
table itself can be rebuilt from the log.

The first table's prices and the model lookup are ``shared.prices``'s (the agent's telemetry
estimate uses the same): the exact model name, else the longest entry the name starts with
followed by ``-`` (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``), else the
``"default"`` entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from control_plane.billing.domain.errors import PriceTableError
from shared.events import BillingPolicyChanged, BillingPriceChanged, LogEvent, Payload
from shared.money import parse_rate
from shared.prices import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported: the default entry
from shared.prices import DEFAULT_MODEL_PRICES as _LIST_PRICES
from shared.prices import resolve_model

DEFAULT_USD_PER_CPU_S = Decimal("0.000050")


def rate(value: object) -> Decimal:
    """Parse a rate (decimal string, ``Decimal`` or int; never float), or raise
    ``PriceTableError``."""
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise PriceTableError(str(exc)) from exc


def rate_str(value: Decimal) -> str:
    """The wire form of a rate: shortest exact decimal string, no exponent (``"0.00005"``)."""
    return format(value.normalize(), "f")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's token rates, USD per one million tokens in (prompt) and out (completion)."""

    usd_per_1m_in: Decimal
    usd_per_1m_out: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "usd_per_1m_in", rate(self.usd_per_1m_in))
        object.__setattr__(self, "usd_per_1m_out", rate(self.usd_per_1m_out))


DEFAULT_MODEL_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        model: ModelPrice(Decimal(rates.usd_per_1m_in), Decimal(rates.usd_per_1m_out))
        for model, rates in _LIST_PRICES.items()
    }
)
"""Prices of the first table (version 1), USD per one million tokens: ``shared.prices``."""


@dataclass(frozen=True, slots=True)
class PriceTable:
    """An immutable, versioned price table. Changes return a new table with a higher version."""

    price_version: int = 1
    usd_per_cpu_s: Decimal = DEFAULT_USD_PER_CPU_S
    models: Mapping[str, ModelPrice] = field(default_factory=lambda: DEFAULT_MODEL_PRICES)

    def __post_init__(self) -> None:
        if isinstance(self.price_version, bool) or not isinstance(self.price_version, int):
            raise PriceTableError("price_version must be an integer")
        if self.price_version < 1:
            raise PriceTableError("price_version starts at 1")
        object.__setattr__(self, "usd_per_cpu_s", rate(self.usd_per_cpu_s))
        models = dict(self.models)
        if DEFAULT_MODEL not in models:
            raise PriceTableError(f"a price table needs a {DEFAULT_MODEL!r} model price")
        for name in models:
            if not isinstance(name, str) or not name:
                raise PriceTableError("model names are non-empty strings")
        object.__setattr__(self, "models", MappingProxyType(models))

    def resolve(self, model: str) -> tuple[str, ModelPrice]:
        """The table entry that prices ``model`` (``shared.prices.resolve_model``: the exact
        name, else the longest ``-``-separated prefix, else the default entry)."""
        entry = resolve_model(model, self.models)
        return entry, self.models[entry]

    def model_price(self, model: str) -> ModelPrice:
        """The rates that apply to ``model`` (see ``resolve``)."""
        return self.resolve(model)[1]

    def with_model_price(
        self, model: str, usd_per_1m_in: Decimal | str, usd_per_1m_out: Decimal | str
    ) -> PriceTable:
        """A new table, one version higher, with ``model`` priced at the given rates."""
        if not isinstance(model, str) or not model:
            raise PriceTableError("model names are non-empty strings")
        models = dict(self.models)
        models[model] = ModelPrice(rate(usd_per_1m_in), rate(usd_per_1m_out))
        return PriceTable(self.price_version + 1, self.usd_per_cpu_s, models)

    def with_cpu_rate(self, usd_per_cpu_s: Decimal | str) -> PriceTable:
        """A new table, one version higher, with the given CPU rate."""
        return PriceTable(self.price_version + 1, rate(usd_per_cpu_s), self.models)


def default_price_table(usd_per_cpu_s: Decimal | str = DEFAULT_USD_PER_CPU_S) -> PriceTable:
    """Version 1: ``DEFAULT_MODEL_PRICES`` and the given CPU rate (the settings' rate)."""
    return PriceTable(1, rate(usd_per_cpu_s), DEFAULT_MODEL_PRICES)


def cpu_stamp(table: PriceTable) -> dict[str, Any]:
    """The ``pricing`` of a ``workunit.completed`` payload: ``{"usd_per_cpu_s",
    "price_version"}``."""
    return {"usd_per_cpu_s": rate_str(table.usd_per_cpu_s), "price_version": table.price_version}


def token_stamp(table: PriceTable, model: str) -> dict[str, Any]:
    """The ``pricing`` of an ``llm.invocation.completed`` payload (and of each ``llm_usage``
    entry of ``workunit.completed``): ``{"model", "usd_per_1m_in", "usd_per_1m_out",
    "price_version"}``. ``model`` is the invoked model's name, priced per ``resolve``."""
    price = table.model_price(model)
    return {
        "model": model,
        "usd_per_1m_in": rate_str(price.usd_per_1m_in),
        "usd_per_1m_out": rate_str(price.usd_per_1m_out),
        "price_version": table.price_version,
    }


def price_changed_payload(table: PriceTable, model: str) -> dict[str, Any]:
    """The payload of the ``billing.price.changed`` event that records ``model``'s entry of
    ``table`` (append it after ``with_model_price``)."""
    if model not in table.models:
        raise PriceTableError(f"model {model!r} has no entry of its own in this table")
    price = table.models[model]
    return {
        "model": model,
        "usd_per_1m_in": rate_str(price.usd_per_1m_in),
        "usd_per_1m_out": rate_str(price.usd_per_1m_out),
        "price_version": table.price_version,
    }


def apply_price_event(table: PriceTable, event: LogEvent[Payload]) -> PriceTable:
    """Fold a ``billing.price.changed`` (a model's rates) or ``billing.policy.changed`` (the CPU
    rate) event into ``table``; the result carries the event's ``price_version`` (never lower
    than the table's). Other events, and events with malformed prices, leave it unchanged."""
    payload = event.payload
    try:
        if isinstance(payload, BillingPriceChanged):
            if not payload.model:
                return table
            models = dict(table.models)
            models[payload.model] = ModelPrice(
                rate(payload.usd_per_1m_in), rate(payload.usd_per_1m_out)
            )
            version = max(payload.price_version, table.price_version)
            return PriceTable(version, table.usd_per_cpu_s, models)
        if isinstance(payload, BillingPolicyChanged):
            version = max(payload.price_version, table.price_version)
            return PriceTable(version, rate(payload.usd_per_cpu_s), table.models)
    except PriceTableError:
        return table
    return table
