"""The control plane's versioned price table and the pricing stamps it puts into events."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from control_plane.billing.domain.errors import PriceTableError
from control_plane.billing.domain.policy import BillingPolicy, policy_changed_payload
from control_plane.billing.domain.pricing import (
    DEFAULT_MODEL,
    ModelPrice,
    PriceTable,
    apply_price_event,
    cpu_stamp,
    default_price_table,
    price_changed_payload,
    rate_str,
    token_stamp,
)
from shared.events import (
    BillingPolicyChanged,
    BillingPriceChanged,
    CpuPricing,
    LogEvent,
    Payload,
    TokenPricing,
    WorkUnitClaimed,
)
from shared.prices import DEFAULT_MODEL_PRICES
from tests.unit.event_kit import read_row

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "usd_in", "usd_out"),
    [
        ("gpt-4o-mini", "0.15", "0.60"),
        ("gpt-4o", "2.50", "10.00"),
        ("gpt-4.1", "2.00", "8.00"),
        ("gpt-4.1-mini", "0.40", "1.60"),
        ("gpt-4.1-nano", "0.10", "0.40"),
        ("o3-mini", "1.10", "4.40"),
        ("gpt-4-turbo", "10.00", "30.00"),
        ("gpt-3.5-turbo", "0.50", "1.50"),
        ("gpt-5", "1.25", "10.00"),
        ("gpt-5-mini", "0.25", "2.00"),
        ("gpt-5-nano", "0.05", "0.40"),
        ("o1", "15.00", "60.00"),
        ("o3", "2.00", "8.00"),
        ("o4-mini", "1.10", "4.40"),
        ("stub", "0.15", "0.60"),
        (DEFAULT_MODEL, "2.50", "10.00"),
    ],
)
def test_default_model_prices(model: str, usd_in: str, usd_out: str) -> None:
    table = default_price_table()
    assert table.model_price(model) == ModelPrice(Decimal(usd_in), Decimal(usd_out))


def test_default_table_is_version_one_with_the_default_cpu_rate() -> None:
    table = default_price_table()
    assert table.price_version == 1
    assert table.usd_per_cpu_s == Decimal("0.000050")
    assert default_price_table("0.0001").usd_per_cpu_s == Decimal("0.0001")
    assert PriceTable() == table


def test_the_first_table_is_the_shared_default_table() -> None:
    table = default_price_table()
    assert set(table.models) == set(DEFAULT_MODEL_PRICES)
    for model, (usd_in, usd_out) in DEFAULT_MODEL_PRICES.items():
        assert table.models[model] == ModelPrice(Decimal(usd_in), Decimal(usd_out))


def test_unknown_models_fall_back_to_default_and_variants_to_their_base() -> None:
    table = default_price_table()
    assert table.resolve("gpt-4o-mini-2024-07-18") == ("gpt-4o-mini", table.models["gpt-4o-mini"])
    assert table.resolve("llama-3-70b") == (DEFAULT_MODEL, table.models[DEFAULT_MODEL])
    # A variant of a known model is priced as that model (the longest known prefix)...
    assert table.resolve("gpt-4o-audio-preview")[0] == "gpt-4o"
    assert table.resolve("gpt-4.1-mini-2025-04-14")[0] == "gpt-4.1-mini"
    # ... only on a "-" boundary: another name is another model.
    assert table.resolve("gpt-4o2")[0] == DEFAULT_MODEL
    # Models an operator priced take part too.
    priced = table.with_model_price("llama-3-70b", "0.59", "0.79")
    assert priced.resolve("llama-3-70b-instruct")[0] == "llama-3-70b"


def test_with_model_price_bumps_the_version_and_leaves_the_old_table_alone() -> None:
    old = default_price_table()
    new = old.with_model_price("llama-3-70b", "0.59", Decimal("0.79"))
    assert new.price_version == 2
    assert new.model_price("llama-3-70b") == ModelPrice(Decimal("0.59"), Decimal("0.79"))
    assert old.model_price("llama-3-70b") == old.models[DEFAULT_MODEL]
    assert old.price_version == 1
    newer = new.with_model_price("gpt-4o", "2.00", "9.00")
    assert newer.price_version == 3
    assert newer.model_price("gpt-4o") == ModelPrice(Decimal("2.00"), Decimal("9.00"))
    assert new.model_price("gpt-4o") == ModelPrice(Decimal("2.50"), Decimal("10.00"))


def test_with_cpu_rate_bumps_the_version() -> None:
    table = default_price_table().with_cpu_rate("0.0001")
    assert (table.price_version, table.usd_per_cpu_s) == (2, Decimal("0.0001"))


def test_the_table_is_immutable() -> None:
    table = default_price_table()
    with pytest.raises(TypeError):
        table.models["gpt-4o"] = ModelPrice(Decimal(0), Decimal(0))  # type: ignore[index]
    with pytest.raises(AttributeError):
        table.price_version = 9  # type: ignore[misc]


@pytest.mark.parametrize("bad", [0.15, -1, "-0.1", "abc", "NaN", "Infinity", True])
def test_rates_must_be_finite_non_negative_decimals(bad: object) -> None:
    with pytest.raises(PriceTableError):
        default_price_table().with_model_price("m", bad, "1")  # type: ignore[arg-type]
    with pytest.raises(PriceTableError):
        default_price_table().with_cpu_rate(bad)  # type: ignore[arg-type]


def test_a_table_needs_a_default_price_and_named_models() -> None:
    with pytest.raises(PriceTableError, match="default"):
        PriceTable(1, Decimal("0.00005"), {"gpt-4o": ModelPrice(Decimal(1), Decimal(1))})
    with pytest.raises(PriceTableError):
        default_price_table().with_model_price("", "1", "1")
    with pytest.raises(PriceTableError):
        PriceTable(0)


def test_rates_travel_as_shortest_exact_decimal_strings() -> None:
    assert rate_str(Decimal("0.000050")) == "0.00005"
    assert rate_str(Decimal("10.00")) == "10"
    assert rate_str(Decimal("0")) == "0"
    assert rate_str(Decimal("1E-7")) == "0.0000001"


def test_cpu_stamp_matches_the_event_schema() -> None:
    stamp = cpu_stamp(default_price_table())
    assert stamp == {"usd_per_cpu_s": "0.00005", "price_version": 1}
    CpuPricing.model_validate(stamp)


def test_token_stamp_matches_the_event_schema_and_names_the_invoked_model() -> None:
    table = default_price_table().with_model_price("gpt-4o-mini", "0.15", "0.60")
    stamp = token_stamp(table, "gpt-4o-mini-2024-07-18")
    assert stamp == {
        "model": "gpt-4o-mini-2024-07-18",
        "usd_per_1m_in": "0.15",
        "usd_per_1m_out": "0.6",
        "price_version": 2,
    }
    TokenPricing.model_validate(stamp)
    assert token_stamp(table, "something-new")["usd_per_1m_out"] == "10"


def _event(seq: int, payload: Payload) -> LogEvent[Payload]:
    return LogEvent.of(payload, seq=seq, event_id=f"evt-{seq}", stream_id="billing", recorded_at=AT)


def test_the_table_can_be_rebuilt_from_its_change_events() -> None:
    live = default_price_table()
    events = []
    live = live.with_model_price("llama-3-70b", "0.59", "0.79")
    payload = price_changed_payload(live, "llama-3-70b")
    events.append(_event(1, BillingPriceChanged.model_validate(payload)))
    live = live.with_cpu_rate("0.00007")
    payload = policy_changed_payload(BillingPolicy(), live)
    events.append(_event(2, BillingPolicyChanged.model_validate(payload)))
    events.append(_event(3, WorkUnitClaimed(node_id="n", attempt=1, lease_expires_at=AT)))
    events.append(read_row(4, "workunit.claimed", {"node_id": "n"}, recorded_at=AT))
    rebuilt = default_price_table()
    for event in events:
        rebuilt = apply_price_event(rebuilt, event)
    assert rebuilt == live
    assert cpu_stamp(rebuilt) == {"usd_per_cpu_s": "0.00007", "price_version": 3}


def test_malformed_price_events_leave_the_table_unchanged() -> None:
    table = default_price_table()
    payloads: list[dict[str, object]] = [
        {"model": "m", "usd_per_1m_in": 0.1, "usd_per_1m_out": "1", "price_version": 2},
        {"model": "", "usd_per_1m_in": "1", "usd_per_1m_out": "1", "price_version": 2},
        {"model": "m", "usd_per_1m_in": "1", "usd_per_1m_out": "1", "price_version": "2"},
        {"model": "m", "usd_per_1m_in": "1", "price_version": 2},
        {"model": "m", "usd_per_1m_in": "-1", "usd_per_1m_out": "1", "price_version": 2},
    ]
    for payload in payloads:
        event = read_row(1, "billing.price.changed", payload, recorded_at=AT)
        assert apply_price_event(table, event) == table
    bad_cpu_rate = {
        "bill_llm_from_workunit_completed": False,
        "bill_llm_from_invocation": True,
        "usd_per_cpu_s": "NaN",
        "price_version": 2,
    }
    event = read_row(1, "billing.policy.changed", bad_cpu_rate, recorded_at=AT)
    assert apply_price_event(table, event) == table


def test_price_changed_payload_needs_a_model_of_the_table() -> None:
    with pytest.raises(PriceTableError):
        price_changed_payload(default_price_table(), "not-in-the-table")
