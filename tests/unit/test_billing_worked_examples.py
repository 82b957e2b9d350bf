"""Worked examples: explicit numbers a person can check by hand (django-hordak style).

Rule under test (``shared.money``): compute exactly, round once per line to 6 places with
ROUND_HALF_EVEN; wallet totals are sums of rounded lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from control_plane.billing.domain.anomalies import find_anomalies
from control_plane.billing.domain.canonical import ledger_jsonl
from control_plane.billing.domain.policy import BillingPolicy, policy_changed_payload
from control_plane.billing.domain.pricing import (
    PriceTable,
    cpu_stamp,
    default_price_table,
    token_stamp,
)
from control_plane.billing.domain.projection import project
from control_plane.billing.domain.rules import cpu_amount, token_amount
from shared.enums import LineItemType
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

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CPU = LineItemType.WORKUNIT_CPU
LLM = LineItemType.LLM_TOKENS


class Log:
    """Builds a log the way the control plane would: stamping the prices in force."""

    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table or default_price_table()
        self.events: list[LogEvent[Payload]] = []

    def _add(self, payload: Payload, tenant: str | None, unit: str) -> LogEvent[Payload]:
        seq = len(self.events) + 1
        event = LogEvent.of(
            payload,
            seq=seq,
            event_id=f"evt-{seq}",
            tenant_id=tenant,
            stream_id=unit,
            recorded_at=AT,
            correlation_id="session-1" if tenant else None,
        )
        self.events.append(event)
        return event

    def _token_stamp(self, model: str) -> TokenPricing:
        return TokenPricing.model_validate(token_stamp(self.table, model))

    def completed(
        self,
        unit: str,
        cpu_ms: int,
        tenant: str = "acme",
        usage: Sequence[tuple[str, int, int]] = (),
    ) -> LogEvent[Payload]:
        return self._add(
            WorkUnitCompleted(
                node_id="node-a",
                attempt=1,
                cpu_ms=cpu_ms,
                pricing=CpuPricing.model_validate(cpu_stamp(self.table)),
                llm_usage=[
                    LlmUsage(model=m, tokens_in=i, tokens_out=o, pricing=self._token_stamp(m))
                    for m, i, o in usage
                ],
            ),
            tenant,
            unit,
        )

    def invoked(
        self,
        unit: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        tenant: str = "acme",
        stale: bool = False,
    ) -> LogEvent[Payload]:
        return self._add(
            LlmInvocationCompleted(
                invocation_id=f"{unit}-{len(self.events)}",
                node_id="node-a",
                attempt=1,
                provider="stub",
                model=model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                total_tokens=tokens_in + tokens_out,
                latency_ms=5,
                estimated_cost_usd="9.999999",  # the agent's guess: never billed
                pricing=self._token_stamp(model),
                stale_claim=stale,
            ),
            tenant,
            unit,
        )

    def policy(self, policy: BillingPolicy) -> LogEvent[Payload]:
        payload = BillingPolicyChanged.model_validate(policy_changed_payload(policy, self.table))
        return self._add(payload, None, "billing")


def amounts(events: list[LogEvent[Payload]]) -> list[str]:
    return [str(line.amount_usd) for line in project(events).ledger()]


# --------------------------------------------------------------------------- single lines


def test_1234_ms_of_cpu_at_0_00005_per_second() -> None:
    # 1.234 s x 0.00005 USD/s = 0.0000617 exactly -> 0.000062
    log = Log()
    log.completed("wu_1", 1234)
    [line] = project(log.events).ledger()
    assert (line.quantity, line.unit, str(line.amount_usd)) == ("1.234000", "cpu_s", "0.000062")


def test_1000_in_and_500_out_tokens_of_gpt_4o_mini() -> None:
    # 1000 x 0.15/1M = 0.000150; 500 x 0.60/1M = 0.000300; total 0.000450
    log = Log()
    log.invoked("wu_1", "gpt-4o-mini", 1000, 500)
    [line] = project(log.events).ledger()
    assert (line.quantity, line.unit, str(line.amount_usd)) == ("1500", "tokens", "0.000450")


@pytest.mark.parametrize(
    ("cpu_ms", "exact", "billed"),
    [
        (10, "0.0000005", "0.000000"),  # half -> even 0
        (30, "0.0000015", "0.000002"),  # half -> even 2
        (50, "0.0000025", "0.000002"),  # half -> even 2 (not 3)
        (70, "0.0000035", "0.000004"),  # half -> even 4
        (11, "0.00000055", "0.000001"),  # above half -> up
        (9, "0.00000045", "0.000000"),  # below half -> down
    ],
)
def test_half_even_rounding_of_cpu_lines(cpu_ms: int, exact: str, billed: str) -> None:
    assert Decimal(cpu_ms) / 1000 * Decimal("0.00005") == Decimal(exact)
    assert str(cpu_amount(cpu_ms, Decimal("0.00005"))) == billed


@pytest.mark.parametrize(
    ("tokens_in", "tokens_out", "billed"),
    [
        (10, 0, "0.000002"),  # 10 x 0.15/1M = 0.0000015 -> even 2
        (30, 0, "0.000004"),  # 0.0000045 -> even 4
        (0, 25, "0.000015"),  # 25 x 0.6/1M = 0.000015 exactly
        (1, 1, "0.000001"),  # 0.00000015 + 0.0000006 = 0.00000075 -> 1
    ],
)
def test_half_even_rounding_of_token_lines(tokens_in: int, tokens_out: int, billed: str) -> None:
    amount = token_amount(tokens_in, tokens_out, Decimal("0.15"), Decimal("0.60"))
    assert str(amount) == billed


def test_a_token_line_is_rounded_once_not_per_half() -> None:
    # At 0.50 per 1M both ways, 1 in + 1 out is 0.0000005 + 0.0000005 = 0.000001 exactly.
    # Rounding each half first would give 0.000000 + 0.000000 = 0.000000.
    table = default_price_table().with_model_price("half", "0.50", "0.50")
    log = Log(table)
    log.invoked("wu_1", "half", 1, 1)
    assert amounts(log.events) == ["0.000001"]


def test_the_agents_estimate_is_never_billed() -> None:
    log = Log()
    log.invoked("wu_1", "gpt-4o-mini", 1000, 500)
    assert amounts(log.events) == ["0.000450"]  # not the agent's "9.999999"


# --------------------------------------------------------------------------- a whole session


def test_a_session_with_cpu_and_llm_units() -> None:
    log = Log()
    log.completed("wu_cpu_1", 1234)  # 0.000062
    log.completed("wu_cpu_2", 2500)  # 2.5 s x 0.00005 = 0.000125
    log.completed("wu_cpu_3", 0)  # 0.000000: still a line
    log.invoked("wu_llm_1", "gpt-4o", 2000, 1000)  # 0.005000 + 0.010000 = 0.015000
    log.invoked("wu_llm_1", "gpt-4.1-nano", 100, 50)  # 0.000010 + 0.000020 = 0.000030
    log.completed("wu_llm_1", 812)  # 0.0000406 -> 0.000041
    log.invoked("wu_llm_2", "gpt-4o-mini", 1000, 500, stale=True)  # platform cost 0.000450
    log.invoked("wu_llm_2", "gpt-4o-mini", 1000, 500)  # the new attempt: 0.000450
    log.completed("wu_llm_2", 100)  # 0.000005
    log.completed("wu_other", 20000, tenant="globex")  # 20 s -> 0.001000

    state = project(log.events)
    assert [(line.work_unit_id, line.line_item_type.value, str(line.amount_usd))
            for line in state.ledger()] == [
        ("wu_cpu_1", "workunit_cpu", "0.000062"),
        ("wu_cpu_2", "workunit_cpu", "0.000125"),
        ("wu_cpu_3", "workunit_cpu", "0.000000"),
        ("wu_llm_1", "llm_tokens", "0.015000"),
        ("wu_llm_1", "llm_tokens", "0.000030"),
        ("wu_llm_1", "workunit_cpu", "0.000041"),
        ("wu_llm_2", "llm_tokens", "0.000450"),
        ("wu_llm_2", "workunit_cpu", "0.000005"),
        ("wu_other", "workunit_cpu", "0.001000"),
    ]  # fmt: skip

    acme = state.wallet("acme")
    # CPU: 0.000062 + 0.000125 + 0.000000 + 0.000041 + 0.000005 = 0.000233
    assert str(acme.totals[CPU]) == "0.000233"
    # LLM: 0.015000 + 0.000030 + 0.000450 = 0.015480 (the stale call is not billed)
    assert str(acme.totals[LLM]) == "0.015480"
    assert str(acme.total_usd) == "0.015713"
    assert acme.as_of_seq == 9  # the last event folded into acme's wallet
    globex = state.wallet("globex")
    assert (str(globex.total_usd), globex.as_of_seq) == ("0.001000", 10)

    [platform] = find_anomalies(log.events, state.ledger())
    assert platform.kind == "platform_cost"
    assert platform.work_unit_id == "wu_llm_2"
    assert "1500 tokens of gpt-4o-mini" in platform.detail
    assert "0.000450 USD" in platform.detail


def test_totals_are_sums_of_rounded_lines() -> None:
    # Three lines of 30 ms are 0.0000015 each, billed 0.000002 each: the wallet shows 0.000006,
    # what the tenant can add up line by line, not the rounded exact sum 0.0000045 -> 0.000004.
    log = Log()
    for n in range(3):
        log.completed(f"wu_{n}", 30)
    state = project(log.events)
    assert amounts(log.events) == ["0.000002"] * 3
    assert str(state.wallet("acme").totals[CPU]) == "0.000006"


def test_a_price_change_applies_to_events_stamped_after_it() -> None:
    log = Log()
    log.invoked("wu_1", "gpt-4o-mini", 1000, 500)  # v1: 0.000450
    log.table = log.table.with_model_price("gpt-4o-mini", "0.30", "1.20")
    log.invoked("wu_2", "gpt-4o-mini", 1000, 500)  # v2: 0.000300 + 0.000600 = 0.000900
    lines = project(log.events).ledger()
    assert [(str(line.amount_usd), line.pricing["price_version"]) for line in lines] == [
        ("0.000450", 1),
        ("0.000900", 2),
    ]
    # Replaying the same log later, with yet other prices in the control plane, changes nothing.
    assert ledger_jsonl(project(log.events).ledger()) == ledger_jsonl(lines)


def test_switching_llm_billing_to_completions() -> None:
    log = Log()
    log.invoked("wu_1", "gpt-4o-mini", 1000, 500)  # billed here: 0.000450
    log.completed("wu_1", 1000, usage=[("gpt-4o-mini", 1000, 500)])  # CPU 0.000050 only
    log.policy(BillingPolicy(bill_llm_from_workunit_completed=True, bill_llm_from_invocation=False))
    log.invoked("wu_2", "gpt-4o-mini", 2000, 1000)  # not billed here any more
    log.completed("wu_2", 1000, usage=[("gpt-4o-mini", 2000, 1000)])  # CPU + 0.000900
    state = project(log.events)
    assert [(line.source_seq, line.line_item_type.value, str(line.amount_usd))
            for line in state.ledger()] == [
        (1, "llm_tokens", "0.000450"),
        (2, "workunit_cpu", "0.000050"),
        (5, "llm_tokens", "0.000900"),
        (5, "workunit_cpu", "0.000050"),
    ]  # fmt: skip
    assert str(state.wallet("acme").total_usd) == "0.001450"
    assert find_anomalies(log.events, state.ledger()) == []


def test_the_digest_of_a_worked_log_is_pinned() -> None:
    """A change of rule, rounding, canonical form or event reading shows here first: this log's
    digest was computed before events were typed (from plain payload dicts), and replay
    digests of existing logs must not move."""
    log = Log()
    log.completed("wu_cpu_1", 1234)
    log.completed("wu_cpu_2", 2500)
    log.completed("wu_cpu_3", 0)
    log.invoked("wu_llm_1", "gpt-4o", 2000, 1000)
    log.invoked("wu_llm_1", "gpt-4.1-nano", 100, 50)
    log.completed("wu_llm_1", 812, usage=[("gpt-4o", 2000, 1000)])
    log.invoked("wu_llm_2", "gpt-4o-mini", 1000, 500, stale=True)
    log.invoked("wu_llm_2", "gpt-4o-mini", 1000, 500)
    log.policy(BillingPolicy(bill_llm_from_workunit_completed=True, bill_llm_from_invocation=False))
    log.completed("wu_llm_2", 100, usage=[("gpt-4o-mini", 1000, 500)])
    log.completed("wu_other", 20000, tenant="globex")
    assert project(log.events).digest() == (
        "0fd600a3c237dc0b27756717fd4a26b8e10a8de6c683ac1272d283f83abbc744"
    )
