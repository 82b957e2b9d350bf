"""The agent's price table, for ``estimated_cost_usd`` telemetry only.

The control plane bills with its own versioned prices; this estimate is shown beside the
billed amount. The table is ``shared.prices``'s default table (the one the control plane's
first table is made of) with the operator's overrides (``KRAKO_LLM_PRICES``) on top, and a
model finds its entry by the same rule as on the control plane (``shared.prices.resolve_model``:
the exact name, else the longest known ``-``-separated prefix, so ``gpt-4o-mini-2024-07-18``
uses ``gpt-4o-mini``, else the ``"default"`` entry). A model priced by the default entry is
logged once. Rates are USD per 1M tokens (exact decimals).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from node_agent.logs import log_event
from shared.money import parse_rate, quantize_usd
from shared.prices import DEFAULT_MODEL, DEFAULT_MODEL_PRICES, resolve_model

MILLION = Decimal(1_000_000)


class PriceTable:
    """Model name to (USD per 1M input tokens, USD per 1M output tokens)."""

    def __init__(self, overrides: Mapping[str, tuple[str, str]] | None = None) -> None:
        merged = {**DEFAULT_MODEL_PRICES, **(overrides or {})}
        self._rates = {
            model: (parse_rate(rate_in), parse_rate(rate_out))
            for model, (rate_in, rate_out) in merged.items()
        }
        self._default_logged: set[str] = set()

    def resolve(self, model: str) -> str:
        """The entry that prices ``model`` (``shared.prices.resolve_model``)."""
        return resolve_model(model, self._rates)

    def rates(self, model: str) -> tuple[Decimal, Decimal]:
        """The rates that apply to ``model`` (see ``resolve``)."""
        return self._rates[self.resolve(model)]

    def estimate(self, model: str, tokens_in: int, tokens_out: int) -> Decimal:
        """Estimated cost, rounded once to 6 places (shared.money's rule)."""
        entry = self.resolve(model)
        rate_in, rate_out = self._rates[entry]
        if entry == DEFAULT_MODEL and model != DEFAULT_MODEL and model not in self._default_logged:
            self._default_logged.add(model)
            log_event("llm_price_default", 30, model=model, priced_as=DEFAULT_MODEL)
        return quantize_usd((tokens_in * rate_in + tokens_out * rate_out) / MILLION)
