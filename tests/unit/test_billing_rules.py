"""Ledger lines, policy, wallets, canonical form, anomalies and budgets, case by case."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Any

import pytest

from control_plane.billing.domain.anomalies import find_anomalies, platform_cost_total
from control_plane.billing.domain.canonical import (
    canonical_line,
    canonical_wallet,
    digest,
    ledger_jsonl,
    rfc3339,
    wallets_jsonl,
)
from control_plane.billing.domain.errors import BillingFlagsError, InvalidBillableEvent
from control_plane.billing.domain.estimates import (
    DEFAULT_CPU_ESTIMATE_S,
    budget_check,
    estimate_unit_cost,
)
from control_plane.billing.domain.policy import (
    DEFAULT_POLICY,
    BillingPolicy,
    fold_policy,
    is_flag_conflict,
    validate_flags,
)
from control_plane.billing.domain.pricing import cpu_stamp, default_price_table, token_stamp
from control_plane.billing.domain.projection import bill_events, project, verify_replay
from control_plane.billing.domain.rules import (
    LedgerLine,
    entry_id_for,
    line_key,
    lines_for_event,
    recompute_amount,
)
from control_plane.billing.domain.wallets import WalletState, empty_wallet, fold_wallets
from shared.enums import LineItemType, WorkUnitKind
from shared.events import (
    BillingPolicyChanged,
    CpuPricing,
    LlmInvocationCompleted,
    LlmUsage,
    LogEvent,
    Payload,
    TokenPricing,
    WorkUnitCompleted,
)
from shared.payloads import PayloadError, parse_payload
from shared.wire import LedgerEntry, Wallet
from tests.unit.event_kit import read_row, tampered

AT = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)
TABLE = default_price_table()
INVOCATION_ONLY = DEFAULT_POLICY
COMPLETION_ONLY = BillingPolicy(
    bill_llm_from_workunit_completed=True, bill_llm_from_invocation=False
)


def ev(
    seq: int,
    payload: Payload,
    *,
    tenant: str | None = "ten_a",
    unit: str = "wu_1",
    session: str | None = "session-1",
    event_id: str | None = None,
    at: datetime = AT,
) -> LogEvent[Payload]:
    return LogEvent.of(
        payload,
        seq=seq,
        event_id=event_id or f"evt-{seq}",
        tenant_id=tenant,
        stream_id=unit,
        recorded_at=at,
        correlation_id=session,
    )


def completed(
    seq: int,
    cpu_ms: int,
    usage: list[LlmUsage] | None = None,
    stamp: CpuPricing | None = None,
    **kw: Any,
) -> LogEvent[Payload]:
    payload = WorkUnitCompleted(
        node_id="node-a",
        attempt=1,
        cpu_ms=cpu_ms,
        pricing=stamp or CpuPricing.model_validate(cpu_stamp(TABLE)),
        llm_usage=usage or [],
    )
    return ev(seq, payload, **kw)


def usage(model: str, tokens_in: int, tokens_out: int) -> LlmUsage:
    return LlmUsage(
        model=model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        pricing=TokenPricing.model_validate(token_stamp(TABLE, model)),
    )


def invoked(
    seq: int,
    tokens_in: int,
    tokens_out: int,
    model: str = "gpt-4o-mini",
    stale: bool = False,
    **kw: Any,
) -> LogEvent[Payload]:
    payload = LlmInvocationCompleted(
        invocation_id=f"inv-{seq}",
        node_id="node-a",
        attempt=1,
        provider="stub",
        model=model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        total_tokens=tokens_in + tokens_out,
        latency_ms=3,
        estimated_cost_usd="0.000001",
        pricing=TokenPricing.model_validate(token_stamp(TABLE, model)),
        stale_claim=stale,
    )
    return ev(seq, payload, **kw)


def policy_event(seq: int, from_completed: bool, from_invocation: bool) -> LogEvent[Payload]:
    payload = BillingPolicyChanged(
        bill_llm_from_workunit_completed=from_completed,
        bill_llm_from_invocation=from_invocation,
        usd_per_cpu_s="0.00005",
        price_version=1,
    )
    return ev(seq, payload, tenant=None, unit="billing", session=None)


# --------------------------------------------------------------------------- lines


def test_a_completion_gives_one_cpu_line() -> None:
    [line] = lines_for_event(completed(7, 1234), INVOCATION_ONLY)
    assert line.line_item_type == LineItemType.WORKUNIT_CPU
    assert line.entry_id == entry_id_for("evt-7", "workunit_cpu")
    assert line.key == ("evt-7", "workunit_cpu", "")
    assert (line.source_event_id, line.source_seq) == ("evt-7", 7)
    assert (line.tenant_id, line.work_unit_id, line.execution_session_id) == (
        "ten_a",
        "wu_1",
        "session-1",
    )
    assert (line.quantity, line.unit) == ("1.234000", "cpu_s")
    assert dict(line.pricing) == {"usd_per_cpu_s": "0.00005", "price_version": 1}
    assert line.amount_usd == Decimal("0.000062")
    assert line.recorded_at == AT


def test_an_invocation_gives_one_token_line() -> None:
    [line] = lines_for_event(invoked(8, 1000, 500), INVOCATION_ONLY)
    assert line.line_item_type == LineItemType.LLM_TOKENS
    assert line.key == ("evt-8", "llm_tokens", "")
    assert (line.quantity, line.unit) == ("1500", "tokens")
    assert dict(line.pricing) == {
        "model": "gpt-4o-mini",
        "tokens_in": 1000,
        "tokens_out": 500,
        "usd_per_1m_in": "0.15",
        "usd_per_1m_out": "0.6",
        "price_version": 1,
    }
    assert line.amount_usd == Decimal("0.000450")


def test_the_line_uses_the_stamped_price_not_the_table() -> None:
    event = completed(1, 1000, stamp=CpuPricing(usd_per_cpu_s="0.001", price_version=7))
    [line] = lines_for_event(event, INVOCATION_ONLY)
    assert line.amount_usd == Decimal("0.001000")
    assert line.pricing["price_version"] == 7


def test_stale_claim_invocations_are_not_billed() -> None:
    assert lines_for_event(invoked(1, 1000, 500, stale=True), INVOCATION_ONLY) == []


def test_invocations_are_not_billed_in_completion_mode() -> None:
    assert lines_for_event(invoked(1, 1000, 500), COMPLETION_ONLY) == []
    # not even read there: one that cannot be priced is not an unbillable event in this mode
    unpriced = tampered(invoked(2, 1000, 500), lambda p: p.pop("pricing"))
    assert lines_for_event(unpriced, COMPLETION_ONLY) == []
    with pytest.raises(InvalidBillableEvent, match="pricing: Field required"):
        lines_for_event(unpriced, INVOCATION_ONLY)


def test_completion_mode_bills_each_usage_entry_under_its_own_key() -> None:
    event = completed(5, 1000, [usage("gpt-4o-mini", 1000, 500), usage("gpt-4o", 10, 20)])
    cpu, first, second = lines_for_event(event, COMPLETION_ONLY)
    assert cpu.line_item_type == LineItemType.WORKUNIT_CPU
    assert first.key == ("evt-5", "llm_tokens", "usage:0")
    assert second.key == ("evt-5", "llm_tokens", "usage:1")
    assert len({cpu.entry_id, first.entry_id, second.entry_id}) == 3
    assert first.amount_usd == Decimal("0.000450")
    assert second.amount_usd == Decimal("0.000225")  # 10 x 2.5/1M + 20 x 10/1M
    assert first.pricing["usage_index"] == 0
    # Invocation mode ignores llm_usage.
    assert len(lines_for_event(event, INVOCATION_ONLY)) == 1


@pytest.mark.parametrize(
    "type_",
    ["workunit.submitted", "workunit.claimed", "workunit.failed", "billing.policy.changed", "x.y"],
)
def test_other_events_give_no_lines(type_: str) -> None:
    # rows of other types (which do not even validate as their type here) give no line
    event = read_row(1, type_, {"cpu_ms": 5}, recorded_at=AT, tenant_id="ten_a")
    assert lines_for_event(event, INVOCATION_ONLY) == []
    assert lines_for_event(policy_event(1, False, True), INVOCATION_ONLY) == []


def test_session_comes_from_correlation_then_payload() -> None:
    event = completed(1, 10, session=None)
    assert lines_for_event(event, INVOCATION_ONLY)[0].execution_session_id == ""
    event = tampered(event, lambda p: p.update(execution_session_id="s-9"))
    assert lines_for_event(event, INVOCATION_ONLY)[0].execution_session_id == "s-9"
    assert (
        lines_for_event(
            tampered(
                invoked(2, 1, 1, session=None), lambda p: p.update(execution_session_id="s-8")
            ),
            INVOCATION_ONLY,
        )[0].execution_session_id
        == "s-8"
    )


def test_recorded_at_is_the_events_in_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    [line] = lines_for_event(completed(1, 10, at=AT.astimezone(plus2)), INVOCATION_ONLY)
    assert line.recorded_at == AT and line.recorded_at.tzinfo == UTC
    [naive] = lines_for_event(completed(1, 10, at=AT.replace(tzinfo=None)), INVOCATION_ONLY)
    assert naive.recorded_at == AT


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p.pop("pricing"), "pricing"),
        (lambda p: p.update(cpu_ms=-1), "cpu_ms"),
        (lambda p: p.update(cpu_ms=1.5), "cpu_ms"),
        (lambda p: p.update(cpu_ms=True), "cpu_ms"),
        (lambda p: p["pricing"].update(usd_per_cpu_s=0.00005), "float"),
        (lambda p: p["pricing"].update(usd_per_cpu_s="-1"), "usd_per_cpu_s"),
        (lambda p: p["pricing"].pop("price_version"), "price_version"),
    ],
)
def test_completions_that_cannot_be_priced_are_refused(change: Any, reason: str) -> None:
    event = tampered(completed(1, 10), change)
    with pytest.raises(InvalidBillableEvent, match=reason) as info:
        lines_for_event(event, INVOCATION_ONLY)
    assert info.value.event_id == "evt-1"


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.update(tokens_in=-1),
        lambda p: p.update(tokens_out="5"),
        lambda p: p.update(stale_claim="false"),
        lambda p: p["pricing"].update(usd_per_1m_in=0.15),
        lambda p: p.update(model=""),
    ],
)
def test_invocations_that_cannot_be_priced_are_refused(change: Any) -> None:
    event = tampered(invoked(1, 10, 10), change)
    with pytest.raises(InvalidBillableEvent):
        lines_for_event(event, INVOCATION_ONLY)


def test_a_billable_event_needs_a_tenant() -> None:
    with pytest.raises(InvalidBillableEvent, match="tenant"):
        lines_for_event(completed(1, 10, tenant=None), INVOCATION_ONLY)


def test_amounts_do_not_depend_on_the_callers_decimal_context() -> None:
    expected = [
        line.amount_usd for line in lines_for_event(invoked(1, 123457, 98765), DEFAULT_POLICY)
    ]
    with localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = ROUND_DOWN
        got = [
            line.amount_usd for line in lines_for_event(invoked(1, 123457, 98765), DEFAULT_POLICY)
        ]
    assert got == expected == [Decimal("0.077778")]  # 0.01851855 + 0.059259 = 0.07777755


def test_huge_counts_are_still_exact() -> None:
    [line] = lines_for_event(invoked(1, 10**15 + 1, 10**15 + 3, model="gpt-4o"), DEFAULT_POLICY)
    # (10^15+1) x 2.5/1M + (10^15+3) x 10/1M = 2500000000.0000025 + 10000000000.00003
    assert line.amount_usd == Decimal("12500000000.000032")


def test_lines_are_recomputable_from_themselves() -> None:
    lines = lines_for_event(
        completed(1, 1234, [usage("o3-mini", 77, 33)]), COMPLETION_ONLY
    ) + lines_for_event(invoked(2, 3, 4), DEFAULT_POLICY)
    for line in lines:
        assert recompute_amount(line) == line.amount_usd
        assert recompute_amount(line.to_entry()) == line.amount_usd


def test_wire_round_trip_keeps_the_key_and_the_canonical_form() -> None:
    lines = lines_for_event(completed(3, 99, [usage("stub", 5, 6)]), COMPLETION_ONLY)
    for line in lines:
        entry = LedgerEntry.model_validate_json(line.to_entry().model_dump_json())
        back = LedgerLine.from_entry(entry)
        assert back == line
        assert line_key(entry) == line.key
        assert canonical_line(entry) == canonical_line(line)


# --------------------------------------------------------------------------- policy


def test_both_flags_on_is_refused_with_a_clear_message() -> None:
    with pytest.raises(BillingFlagsError, match="bill every LLM token twice") as info:
        BillingPolicy(bill_llm_from_workunit_completed=True, bill_llm_from_invocation=True)
    assert info.value.code == "billing_flags_conflict"
    with pytest.raises(BillingFlagsError):
        validate_flags(True, True)
    validate_flags(False, False)
    validate_flags(True, False)


def test_policy_is_folded_from_events_and_a_conflicting_change_is_not_applied() -> None:
    assert BillingPolicy(False, True) == DEFAULT_POLICY
    policy = fold_policy(DEFAULT_POLICY, policy_event(1, True, False))
    assert policy == COMPLETION_ONLY
    conflict = policy_event(2, True, True)
    assert is_flag_conflict(conflict)
    assert fold_policy(policy, conflict) == COMPLETION_ONLY
    assert fold_policy(policy, completed(3, 10)) == COMPLETION_ONLY
    assert not is_flag_conflict(completed(3, 10))
    assert fold_policy(policy, policy_event(4, False, False)) == BillingPolicy(False, False)


def test_the_policy_in_force_is_the_one_before_the_event() -> None:
    events = [
        completed(1, 1000, [usage("gpt-4o-mini", 1000, 500)]),
        invoked(2, 1000, 500),
        policy_event(3, True, False),
        completed(4, 1000, [usage("gpt-4o-mini", 1000, 500)], unit="wu_2"),
        invoked(5, 1000, 500, unit="wu_2"),
    ]
    state = project(events)
    assert sorted((line.source_seq, line.line_item_type.value) for line in state.ledger()) == [
        (1, "workunit_cpu"),
        (2, "llm_tokens"),
        (4, "llm_tokens"),
        (4, "workunit_cpu"),
    ]
    assert state.policy == COMPLETION_ONLY


# --------------------------------------------------------------------------- projection


def test_project_skips_seen_events_and_sorts_a_delivery() -> None:
    events = [completed(1, 1000), invoked(2, 10, 10), completed(3, 2000, unit="wu_2")]
    once = project(events)
    again = project(list(reversed(events)) + events)
    assert again == once
    assert project(events, once) is once
    assert project(events[:1], once) is once
    assert once.events_folded == 3 and once.last_seq == 3


def test_bill_events_then_insert_if_absent_matches_project() -> None:
    events = [
        completed(1, 1000),
        invoked(2, 10, 10),
        policy_event(3, True, False),
        completed(4, 5, [usage("gpt-4o", 1, 1)], unit="wu_2"),
    ]
    table: dict[tuple[str, str, str], LedgerLine] = {}
    wallets: dict[str, WalletState] = {}
    policy, after = DEFAULT_POLICY, 0
    for batch in ([events[0], events[1]], [events[1], events[2], events[3]], events):
        result = bill_events(policy, batch, after)
        inserted = [line for line in result.lines if line.key not in table]
        table.update((line.key, line) for line in inserted)
        wallets = fold_wallets(wallets, inserted)
        policy, after = result.policy, result.last_seq
    state = project(events)
    assert digest(table.values(), wallets) == state.digest()


def test_unbillable_events_are_kept_aside_and_do_not_stop_the_fold() -> None:
    bad = tampered(completed(2, 10), lambda p: p.pop("pricing"))
    state = project([completed(1, 10), bad, completed(3, 20, unit="wu_3")])
    assert len(state.lines) == 2
    assert set(state.rejected) == {"evt-2"}
    assert "pricing" in state.rejected["evt-2"]


def test_verify_replay_compares_with_the_live_state() -> None:
    events = [completed(1, 1000), invoked(2, 10, 10), completed(3, 50)]
    live = project(events[:2])
    report = verify_replay(events, live.ledger(), live.wallets, up_to_seq=2)
    assert report.identical and report.events_replayed == 2 and report.ledger_entries == 2
    assert report.live_digest == report.replay_digest == live.digest()
    tampered = [live.ledger()[0], live.ledger()[0]]
    assert not verify_replay(events, tampered, live.wallets, up_to_seq=2).identical
    assert not verify_replay(events, live.ledger(), live.wallets).identical


# --------------------------------------------------------------------------- wallets


def test_fold_wallets_is_pure_and_as_of_seq_is_the_last_event_folded_in() -> None:
    lines = lines_for_event(completed(4, 1234), DEFAULT_POLICY) + lines_for_event(
        invoked(9, 1000, 500, tenant="ten_b"), DEFAULT_POLICY
    )
    start = {"ten_a": WalletState("ten_a", 2, {LineItemType.WORKUNIT_CPU: Decimal("0.000100")})}
    result = fold_wallets(start, lines)
    assert start["ten_a"].as_of_seq == 2  # unchanged
    assert result["ten_a"].as_of_seq == 4
    assert result["ten_a"].totals[LineItemType.WORKUNIT_CPU] == Decimal("0.000162")
    assert result["ten_a"].totals[LineItemType.LLM_TOKENS] == Decimal("0.000000")
    assert result["ten_b"].as_of_seq == 9
    assert result["ten_b"].total_usd == Decimal("0.000450")
    assert fold_wallets(result, []) == result


def test_wallet_wire_form() -> None:
    wallet = fold_wallets({}, lines_for_event(completed(4, 1234), DEFAULT_POLICY))["ten_a"]
    wire = wallet.to_wire()
    assert json.loads(wire.model_dump_json()) == {
        "tenant_id": "ten_a",
        "as_of_seq": 4,
        "totals": {"workunit_cpu": "0.000062", "llm_tokens": "0.000000"},
        "total_usd": "0.000062",
    }
    assert WalletState.from_wire(wire) == wallet
    assert empty_wallet("t").total_usd == Decimal(0)


# --------------------------------------------------------------------------- canonical form


def test_canonical_line_format() -> None:
    [line] = lines_for_event(invoked(2, 1000, 500), DEFAULT_POLICY)
    text = canonical_line(line)
    assert " " not in text and "\n" not in text
    obj = json.loads(text)
    assert list(obj) == sorted(obj)
    assert list(obj["pricing"]) == sorted(obj["pricing"])
    assert obj["amount_usd"] == "0.000450"
    assert obj["recorded_at"] == "2026-11-27T12:00:00.123456Z"
    assert obj["source_seq"] == 2 and obj["pricing"]["tokens_in"] == 1000
    assert set(obj) == set(LedgerEntry.model_fields)


def test_rfc3339_has_fixed_precision() -> None:
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"


def test_canonical_form_refuses_floats() -> None:
    [line] = lines_for_event(completed(1, 10), DEFAULT_POLICY)
    entry = line.to_entry()
    entry.pricing["usd_per_cpu_s"] = 0.00005
    with pytest.raises(TypeError):
        canonical_line(entry)


def test_ledger_and_wallet_jsonl_order_and_digest() -> None:
    state = project(
        [completed(2, 10, tenant="ten_b"), completed(1, 10, tenant="ten_c"), invoked(3, 1, 1)]
    )
    lines = state.ledger()
    text = ledger_jsonl(reversed(lines))
    assert [json.loads(row)["source_seq"] for row in text.splitlines()] == [1, 2, 3]
    assert text.endswith("\n") and ledger_jsonl([]) == ""
    wallets_text = wallets_jsonl(state.wallets)
    assert [json.loads(row)["tenant_id"] for row in wallets_text.splitlines()] == [
        "ten_a",
        "ten_b",
        "ten_c",
    ]
    assert wallets_jsonl([w.to_wire() for w in state.wallets.values()]) == wallets_text
    assert canonical_wallet(state.wallets["ten_a"]) == json.dumps(
        json.loads(wallets_text.splitlines()[0]), sort_keys=True, separators=(",", ":")
    )
    import hashlib

    assert (
        digest(lines, state.wallets)
        == hashlib.sha256((ledger_jsonl(lines) + wallets_text).encode()).hexdigest()
    )
    assert digest(reversed(lines), list(state.wallets.values())) == state.digest()


# --------------------------------------------------------------------------- anomalies


def kinds(anomalies: list[Any]) -> list[str]:
    return [a.kind for a in anomalies]


def test_a_clean_ledger_has_no_anomalies() -> None:
    events = [completed(1, 10), invoked(2, 10, 10), completed(3, 0, unit="wu_2")]
    assert find_anomalies(events, project(events).ledger()) == []
    assert find_anomalies(events, [line.to_entry() for line in project(events).ledger()]) == []


def test_missing_orphan_duplicate_and_unexpected_lines() -> None:
    events = [completed(1, 10), invoked(2, 10, 10)]
    [cpu, tokens] = project(events).ledger()
    assert kinds(find_anomalies(events, [tokens])) == ["missing_line"]
    [missing] = find_anomalies(events, [tokens])
    assert (missing.source_event_id, missing.work_unit_id) == ("evt-1", "wu_1")
    assert "workunit_cpu" in missing.detail
    assert kinds(find_anomalies(events[:1], [cpu, tokens])) == ["orphan_line"]
    assert kinds(find_anomalies(events, [cpu, tokens, cpu])) == ["duplicate_line"]
    stale = [completed(1, 10), invoked(2, 10, 10, stale=True)]
    assert kinds(find_anomalies(stale, [cpu, tokens])) == ["platform_cost", "unexpected_line"]


def test_invalid_amounts_and_mismatches() -> None:
    events = [completed(1, 1234)]
    [cpu] = project(events).ledger()
    entry = cpu.to_entry()
    negative = entry.model_copy(update={"amount_usd": Decimal("-0.000062")})
    assert kinds(find_anomalies(events, [negative])) == ["invalid_amount", "line_mismatch"]
    seven_places = LedgerLine(**{**_fields(cpu), "amount_usd": Decimal("0.0000617")})
    assert kinds(find_anomalies(events, [seven_places])) == ["invalid_amount", "line_mismatch"]
    wrong_tenant = entry.model_copy(update={"tenant_id": "ten_z"})
    [mismatch] = find_anomalies(events, [wrong_tenant])
    assert mismatch.kind == "line_mismatch" and "tenant_id" in mismatch.detail


def _fields(line: LedgerLine) -> dict[str, Any]:
    return {name: getattr(line, name) for name in LedgerLine.__dataclass_fields__}


def test_platform_cost_reports_what_a_stale_claim_would_have_cost() -> None:
    events = [invoked(1, 1000, 500, stale=True), invoked(2, 1000, 500, stale=True, event_id="x")]
    anomalies = find_anomalies(events, [])
    assert kinds(anomalies) == ["platform_cost", "platform_cost"]
    assert "0.000450 USD" in anomalies[0].detail
    assert platform_cost_total(events + events) == Decimal("0.000900")


def test_flag_misconfiguration_and_unbillable_events() -> None:
    bad = tampered(completed(3, 10), lambda p: p.update(cpu_ms=-5))
    events = [policy_event(1, True, True), completed(2, 10), bad]
    lines = project(events).ledger()
    # The unpriceable completion is reported once, as unbillable (not also as missing).
    assert kinds(find_anomalies(events, lines)) == ["flag_misconfiguration", "unbillable_event"]
    [unbillable] = [a for a in find_anomalies(events, lines) if a.kind == "unbillable_event"]
    assert (unbillable.source_event_id, unbillable.work_unit_id) == ("evt-3", "wu_1")
    assert "cpu_ms" in unbillable.detail
    assert kinds(find_anomalies(events[1:2], lines, policy_flags_conflict=True)) == [
        "flag_misconfiguration"
    ]


# --------------------------------------------------------------------------- budgets


def test_budget_check() -> None:
    d = Decimal
    assert budget_check(None, d("100"), d("100"), d("100"))
    assert budget_check(d("1.000000"), d("0.5"), d("0.25"), d("0.25"))
    assert not budget_check(d("1.000000"), d("0.5"), d("0.25"), d("0.250001"))
    assert budget_check(d("0"), d("0"), d("0"), d("0"))
    with pytest.raises(TypeError):
        budget_check(d("1"), 0.5, d("0"), d("0"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        budget_check(d("1"), d("0"), d("0"), d("-1"))


def test_estimates_are_conservative_and_documented() -> None:
    cpu_default = estimate_unit_cost("cpu", {"handler": "noop"}, TABLE)
    assert cpu_default == DEFAULT_CPU_ESTIMATE_S * Decimal("0.00005") == Decimal("0.000500")
    assert estimate_unit_cost("cpu", {"handler": "noop", "timeout_s": 2}, TABLE) == Decimal(
        "0.000100"
    )
    assert estimate_unit_cost("cpu", {"handler": "noop", "timeout_s": 0.5}, TABLE) == Decimal(
        "0.000025"
    )
    sleep = {"handler": "sleep", "args": {"ms": 3000}}
    assert estimate_unit_cost("cpu", sleep, TABLE) == Decimal("0.000200")  # (3 + 1) s
    # 7 characters -> ceil(7/3) = 3 + 8 = 11 tokens in, 512 out, at gpt-4o-mini, plus 10 s CPU:
    # 11 x 0.15/1M + 512 x 0.6/1M + 0.0005 = 0.00000165 + 0.0003072 + 0.0005 -> 0.000809 (up)
    llm = {"prompt": "x" * 7, "model": "gpt-4o-mini"}
    assert estimate_unit_cost("llm_pod", llm, TABLE) == Decimal("0.000809")
    assert estimate_unit_cost("llm_pod", {**llm, "max_tokens": 10}, TABLE) < estimate_unit_cost(
        "llm_pod", llm, TABLE
    )
    assert estimate_unit_cost("llm_pod", {"messages": [{"role": "user", "content": "hi"}]}, TABLE)
    # the parsed payload (what submit hands over) gives the same estimate as the raw one
    parsed = parse_payload(WorkUnitKind.LLM_POD, llm)
    assert estimate_unit_cost("llm_pod", parsed, TABLE) == Decimal("0.000809")
    with pytest.raises(ValueError):
        estimate_unit_cost("gpu", {}, TABLE)
    with pytest.raises(PayloadError, match="'max_tokens'"):
        estimate_unit_cost("llm_pod", {**llm, "max_tokens": "10"}, TABLE)


def test_llm_estimates_count_what_the_agent_sends() -> None:
    # {"role": "user", "content": "hi"} is 33 characters of JSON: ceil(33/3) = 11 + 8 = 19 in,
    # 512 out, at the default entry (2.50/10.00 per 1M), plus 10 s CPU:
    # 19 x 2.5/1M + 512 x 10/1M + 0.0005 = 0.0000475 + 0.00512 + 0.0005 -> 0.005668 (up)
    messages = {"messages": [{"role": "user", "content": "hi"}]}
    assert estimate_unit_cost("llm_pod", messages, TABLE) == Decimal("0.005668")
    # with both, the messages are what runs, so they are what is estimated
    both = {**messages, "prompt": "x" * 3000}
    assert estimate_unit_cost("llm_pod", both, TABLE) == Decimal("0.005668")
    # keys the tenant left out are not counted as present (no "content": null added)
    bare = {"messages": [{"role": "user"}]}
    assert estimate_unit_cost("llm_pod", bare, TABLE) < estimate_unit_cost(
        "llm_pod", messages, TABLE
    )


def test_wallet_model_is_the_wire_model() -> None:
    assert isinstance(WalletState("t").to_wire(), Wallet)
