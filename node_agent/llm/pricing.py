"""The agent's price table, for ``estimated_cost_usd`` telemetry only.

The control plane bills with its own versioned prices; this estimate is shown beside the
billed amount. Rates are USD per 1M tokens (exact decimals). A model matches its own entry
or, failing that, the longest entry it starts with (``gpt-4o-mini-2024-07-18`` uses
``gpt-4o-mini``). Unknown models cost ``0.000000`` (and are logged once).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from node_agent.logs import log_event
from shared.money import parse_rate, quantize_usd

MILLION = Decimal(1_000_000)

# USD per 1M tokens (input, output), public list prices.
DEFAULT_PRICES: dict[str, tuple[str, str]] = {
    "gpt-4o-mini": ("0.15", "0.60"),
    "gpt-4o": ("2.50", "10.00"),
    "gpt-4.1": ("2.00", "8.00"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.40"),
    "gpt-4-turbo": ("10.00", "30.00"),
    "gpt-3.5-turbo": ("0.50", "1.50"),
    "gpt-5": ("1.25", "10.00"),
    "gpt-5-mini": ("0.25", "2.00"),
    "gpt-5-nano": ("0.05", "0.40"),
    "o1": ("15.00", "60.00"),
    "o3": ("2.00", "8.00"),
    "o3-mini": ("1.10", "4.40"),
    "o4-mini": ("1.10", "4.40"),
}


class PriceTable:
    """Model name to (USD per 1M input tokens, USD per 1M output tokens)."""

    def __init__(self, overrides: Mapping[str, tuple[str, str]] | None = None) -> None:
        merged = {**DEFAULT_PRICES, **(overrides or {})}
        self._rates = {
            model: (parse_rate(rate_in), parse_rate(rate_out))
            for model, (rate_in, rate_out) in merged.items()
        }
        # Longest first, so the most specific prefix wins.
        self._by_length = sorted(self._rates, key=len, reverse=True)
        self._unknown_logged: set[str] = set()

    def rates(self, model: str) -> tuple[Decimal, Decimal] | None:
        """The rates for ``model`` (exact or longest prefix), or None."""
        found = self._rates.get(model)
        if found is not None:
            return found
        for name in self._by_length:
            if model.startswith(name):
                return self._rates[name]
        return None

    def estimate(self, model: str, tokens_in: int, tokens_out: int) -> Decimal:
        """Estimated cost, rounded once to 6 places (shared.money's rule)."""
        rates = self.rates(model)
        if rates is None:
            if model not in self._unknown_logged:
                self._unknown_logged.add(model)
                log_event("llm_price_unknown", 30, model=model, estimated_cost_usd="0.000000")
            return quantize_usd(0)
        rate_in, rate_out = rates
        return quantize_usd((tokens_in * rate_in + tokens_out * rate_out) / MILLION)
