"""The one default price table and the one model-matching rule (shared.prices), and that the
control plane's table and the agent's telemetry table give the same rates for the same names."""

from __future__ import annotations

from decimal import Decimal

import pytest

from control_plane.billing.domain.pricing import default_price_table
from node_agent.llm.pricing import PriceTable as AgentPriceTable
from shared.money import parse_rate
from shared.prices import DEFAULT_MODEL, DEFAULT_MODEL_PRICES, resolve_model

NAMES = {"gpt-4o", "gpt-4o-mini", "gpt-4", "o3", "o3-mini", "llama-3", DEFAULT_MODEL}


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        # 1. the exact name
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("o3-mini", "o3-mini"),
        # 2. the longest known prefix followed by "-": snapshots and variants
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-audio-preview", "gpt-4o"),
        ("gpt-4-0613", "gpt-4"),
        ("o3-mini-high", "o3-mini"),
        ("o3-pro", "o3"),
        ("llama-3-70b-instruct", "llama-3"),
        # ... only whole "-"-separated parts
        ("gpt-4o2", DEFAULT_MODEL),
        ("gpt-4omni", DEFAULT_MODEL),
        ("o3x", DEFAULT_MODEL),
        # 3. else the default entry (which is never a prefix of its own)
        ("claude-3", DEFAULT_MODEL),
        ("default-model", DEFAULT_MODEL),
        (DEFAULT_MODEL, DEFAULT_MODEL),
        ("", DEFAULT_MODEL),
        ("-gpt-4o", DEFAULT_MODEL),
        ("gpt", DEFAULT_MODEL),
    ],
)
def test_the_matching_rule(model: str, entry: str) -> None:
    assert resolve_model(model, NAMES) == entry


def test_the_default_table_is_exact_decimal_strings_with_a_default_entry() -> None:
    assert DEFAULT_MODEL in DEFAULT_MODEL_PRICES
    assert "stub" in DEFAULT_MODEL_PRICES
    for model, (usd_in, usd_out) in DEFAULT_MODEL_PRICES.items():
        assert model and isinstance(usd_in, str) and isinstance(usd_out, str)
        assert parse_rate(usd_in) >= 0 and parse_rate(usd_out) >= 0
    # the control plane's rates for its default entry and the stub (billed amounts depend on them)
    assert DEFAULT_MODEL_PRICES[DEFAULT_MODEL] == ("2.50", "10.00")
    assert DEFAULT_MODEL_PRICES["stub"] == DEFAULT_MODEL_PRICES["gpt-4o-mini"] == ("0.15", "0.60")


SAMPLE_NAMES = [
    *DEFAULT_MODEL_PRICES,
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4o-audio-preview",
    "gpt-4-turbo-preview",
    "gpt-3.5-turbo-0125",
    "o1-preview",
    "o4-mini-deep-research",
    "gpt-5-codex",
    "stub-large",
    "gpt-4o2",
    "llama-3-70b",
    "mystery-model",
    "",
]


@pytest.mark.parametrize("model", SAMPLE_NAMES)
def test_both_sides_give_the_same_rates_for_the_same_name(model: str) -> None:
    control_plane = default_price_table()
    agent = AgentPriceTable()
    entry, price = control_plane.resolve(model)
    assert agent.resolve(model) == entry
    assert agent.rates(model) == (price.usd_per_1m_in, price.usd_per_1m_out)


def test_both_sides_agree_on_an_operator_priced_model_too() -> None:
    control_plane = default_price_table().with_model_price("llama-3-70b", "0.59", "0.79")
    agent = AgentPriceTable({"llama-3-70b": ("0.59", "0.79")})
    for model in ("llama-3-70b", "llama-3-70b-instruct", "llama-3"):
        entry, price = control_plane.resolve(model)
        assert agent.resolve(model) == entry
        assert agent.rates(model) == (price.usd_per_1m_in, price.usd_per_1m_out)
    assert agent.rates("llama-3-70b-instruct") == (Decimal("0.59"), Decimal("0.79"))


def test_agent_overrides_replace_defaults_and_may_reprice_the_default_entry() -> None:
    agent = AgentPriceTable({"gpt-4o": ("1", "2"), DEFAULT_MODEL: ("0", "0")})
    assert agent.rates("gpt-4o-2024-08-06") == (Decimal(1), Decimal(2))
    assert agent.estimate("mystery-model", 10**6, 10**6) == Decimal("0.000000")
    assert agent.rates("gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"))
