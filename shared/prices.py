"""The one default model-price table and the one rule that finds a model's entry in a table.

Both sides use them: the control plane seeds its versioned price table (version 1) from
``DEFAULT_MODEL_PRICES`` and bills with it; the agent estimates ``estimated_cost_usd``
(telemetry, never billed) from the same table plus its operator's overrides. Both look a
model up with ``resolve_model``, so the same model name gets the same rates on both sides.

Rates are USD per one million tokens, input (prompt) and output (completion), as decimal
strings: money is never a float (``shared.money.parse_rate`` reads them).

The matching rule, in order:

1. the model's own entry (exact name);
2. else the longest entry the name starts with, followed by ``-``: a snapshot
   (``gpt-4o-mini-2024-07-18``) or a variant (``gpt-4o-audio-preview``) of a known model is
   priced as that model (``gpt-4o-mini``, ``gpt-4o``). Only whole ``-``-separated parts
   count: ``gpt-4o2`` is not ``gpt-4o``;
3. else the ``"default"`` entry, which every table has.

The ``"default"`` entry is never a prefix match of its own (``default-x`` is priced by step 3,
with the same result).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from types import MappingProxyType
from typing import NamedTuple

DEFAULT_MODEL = "default"
"""The entry that prices any model without an entry of its own."""


class ModelRates(NamedTuple):
    """A model's list prices: USD per one million tokens in and out, as decimal strings."""

    usd_per_1m_in: str
    usd_per_1m_out: str


DEFAULT_MODEL_PRICES: Mapping[str, ModelRates] = MappingProxyType(
    {
        "gpt-3.5-turbo": ModelRates("0.50", "1.50"),
        "gpt-4-turbo": ModelRates("10.00", "30.00"),
        "gpt-4.1": ModelRates("2.00", "8.00"),
        "gpt-4.1-mini": ModelRates("0.40", "1.60"),
        "gpt-4.1-nano": ModelRates("0.10", "0.40"),
        "gpt-4o": ModelRates("2.50", "10.00"),
        "gpt-4o-mini": ModelRates("0.15", "0.60"),
        "gpt-5": ModelRates("1.25", "10.00"),
        "gpt-5-mini": ModelRates("0.25", "2.00"),
        "gpt-5-nano": ModelRates("0.05", "0.40"),
        "o1": ModelRates("15.00", "60.00"),
        "o3": ModelRates("2.00", "8.00"),
        "o3-mini": ModelRates("1.10", "4.40"),
        "o4-mini": ModelRates("1.10", "4.40"),
        # The deterministic stub provider is priced like a small model so that demos and
        # tests produce non-zero, human-checkable amounts.
        "stub": ModelRates("0.15", "0.60"),
        # Unknown models are priced like a flagship model: a guess that errs on the side of
        # the platform's cost; an operator sets a real price for a model they serve.
        DEFAULT_MODEL: ModelRates("2.50", "10.00"),
    }
)
"""The default rates, USD per one million tokens (public list prices where there are some)."""


def resolve_model(model: str, known: Container[str]) -> str:
    """The entry of ``known`` that prices ``model``, by the module's rule: the exact name, else
    the longest known ``-``-separated prefix, else ``DEFAULT_MODEL``.

    ``known`` is the table's set of names (a mapping works); it should hold ``DEFAULT_MODEL``.
    At most one lookup per ``-`` in the name, so no index of the table is needed."""
    if model in known:
        return model
    cut = model.rfind("-")
    while cut > 0:
        prefix = model[:cut]
        if prefix in known and prefix != DEFAULT_MODEL:
            return prefix
        cut = model.rfind("-", 0, cut)
    return DEFAULT_MODEL
