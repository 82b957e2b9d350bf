"""Property tests: however events are delivered, the ledger and the wallets come out the same.

Random logs mix completions (with and without LLM usage), invocations (some under a lost
claim), policy changes (some with both flags on), price changes and unrelated events; random
deliveries cut them into batches, repeat events, re-deliver old ones and shuffle each batch.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.billing.domain.anomalies import find_anomalies
from control_plane.billing.domain.canonical import digest, ledger_jsonl
from control_plane.billing.domain.errors import BillingFlagsError
from control_plane.billing.domain.policy import DEFAULT_POLICY, BillingPolicy, fold_policy
from control_plane.billing.domain.pricing import (
    PriceTable,
    cpu_stamp,
    default_price_table,
    price_changed_payload,
    token_stamp,
)
from control_plane.billing.domain.projection import BillingState, bill_events, project
from control_plane.billing.domain.rules import (
    LedgerLine,
    LineKey,
    lines_for_event,
    recompute_amount,
)
from control_plane.billing.domain.wallets import WalletState, fold_wallets
from shared.enums import LineItemType
from shared.events import (
    BillingPolicyChanged,
    BillingPriceChanged,
    CpuPricing,
    LlmInvocationCompleted,
    LlmUsage,
    LogEvent,
    Payload,
    TokenPricing,
    WorkUnitClaimed,
    WorkUnitCompleted,
)
from shared.money import ZERO
from shared.wire import LedgerEntry

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TENANTS = ["ten_a", "ten_b", "ten_c"]
MODELS = ["gpt-4o-mini", "gpt-4o", "o3-mini", "stub", "gpt-4o-mini-2024-07-18", "mystery-model"]
KINDS = ["completed", "completed", "invoked", "invoked", "stale", "policy", "price", "other"]
FLAGS = [(False, True), (True, False), (False, False), (True, True)]

tokens = st.integers(min_value=0, max_value=5_000_000)


@st.composite
def logs(draw: st.DrawFn) -> list[LogEvent[Payload]]:
    """A log as the control plane would write it: increasing seqs (with gaps), unique ids,
    prices stamped from the table in force."""
    table: PriceTable = default_price_table()
    events: list[LogEvent[Payload]] = []
    seq = 0
    for _ in range(draw(st.integers(min_value=0, max_value=30))):
        seq += draw(st.integers(min_value=1, max_value=3))
        kind = draw(st.sampled_from(KINDS))
        tenant: str | None = draw(st.sampled_from(TENANTS))
        unit = f"wu_{draw(st.integers(min_value=0, max_value=6))}"
        payload: Payload
        if kind == "completed":
            usage = [
                LlmUsage(
                    model=(model := draw(st.sampled_from(MODELS))),
                    tokens_in=draw(tokens),
                    tokens_out=draw(tokens),
                    pricing=TokenPricing.model_validate(token_stamp(table, model)),
                )
                for _ in range(draw(st.integers(min_value=0, max_value=2)))
            ]
            payload = WorkUnitCompleted(
                node_id="node-a",
                attempt=1,
                cpu_ms=draw(st.integers(min_value=0, max_value=10**8)),
                pricing=CpuPricing.model_validate(cpu_stamp(table)),
                llm_usage=usage,
            )
        elif kind in ("invoked", "stale"):
            model = draw(st.sampled_from(MODELS))
            payload = LlmInvocationCompleted(
                invocation_id=f"inv-{seq}",
                node_id="node-a",
                attempt=1,
                provider="stub",
                model=model,
                tokens_in=draw(tokens),
                tokens_out=draw(tokens),
                total_tokens=0,
                latency_ms=1,
                estimated_cost_usd="0.000001",
                pricing=TokenPricing.model_validate(token_stamp(table, model)),
                stale_claim=kind == "stale",
            )
        elif kind == "policy":
            from_completed, from_invocation = draw(st.sampled_from(FLAGS))
            if draw(st.booleans()):
                table = table.with_cpu_rate(draw(st.sampled_from(["0.00005", "0.0001", "0.0003"])))
            payload = BillingPolicyChanged(
                bill_llm_from_workunit_completed=from_completed,
                bill_llm_from_invocation=from_invocation,
                usd_per_cpu_s=cpu_stamp(table)["usd_per_cpu_s"],
                price_version=table.price_version,
            )
            tenant, unit = None, "billing"
        elif kind == "price":
            model = draw(st.sampled_from(MODELS))
            usd_in = draw(st.sampled_from(["0.1", "0.15", "0.5", "2.5", "3.3333333"]))
            usd_out = draw(st.sampled_from(["0.4", "0.6", "1.5", "10", "7.77"]))
            table = table.with_model_price(model, usd_in, usd_out)
            payload = BillingPriceChanged.model_validate(price_changed_payload(table, model))
            tenant, unit = None, "billing"
        else:
            payload = WorkUnitClaimed(node_id="node-a", attempt=1, lease_expires_at=T0)
        events.append(
            LogEvent.of(
                payload,
                seq=seq,
                event_id=f"evt-{seq}",
                tenant_id=tenant,
                stream_id=unit,
                recorded_at=T0 + timedelta(microseconds=seq * 1001),
                correlation_id=f"session-{unit}" if tenant else None,
            )
        )
    return events


def is_stale(event: LogEvent[Payload]) -> bool:
    return isinstance(event.payload, LlmInvocationCompleted) and event.payload.stale_claim


@st.composite
def deliveries(draw: st.DrawFn, log: list[LogEvent[Payload]]) -> list[list[LogEvent[Payload]]]:
    """The log cut into batches in order, each batch shuffled and padded with repeats of events
    from it or from earlier batches (re-delivery), plus batches of nothing but old events."""
    rnd = draw(st.randoms(use_true_random=False))
    cuts = sorted(draw(st.lists(st.integers(0, len(log)), max_size=8)))
    bounds = [0, *cuts, len(log)]
    batches: list[list[LogEvent[Payload]]] = []
    for start, end in itertools.pairwise(bounds):
        seen = log[:end]
        batch = log[start:end] + [rnd.choice(seen) for _ in range(rnd.randint(0, 4)) if seen]
        rnd.shuffle(batch)
        batches.append(batch)
        if seen and rnd.random() < 0.3:
            batches.append(rnd.sample(seen, k=min(len(seen), rnd.randint(1, 5))))
    return batches


def reference_lines(log: list[LogEvent[Payload]]) -> list[LedgerLine]:
    """Naive billing of a log delivered once, in order."""
    policy = DEFAULT_POLICY
    lines: list[LedgerLine] = []
    for event in log:
        lines.extend(lines_for_event(event, policy))
        policy = fold_policy(policy, event)
    return lines


def fold(batches: list[list[LogEvent[Payload]]]) -> BillingState:
    state = BillingState()
    for batch in batches:
        state = project(batch, state)
    return state


# --------------------------------------------------------------------------- idempotence


@SETTINGS
@given(st.data())
def test_any_delivery_gives_the_same_ledger_wallets_and_digest(data: st.DataObject) -> None:
    log = data.draw(logs())
    once = project(log)
    delivered = fold(data.draw(deliveries(log)))
    assert delivered == once
    assert delivered.digest() == once.digest()
    assert ledger_jsonl(delivered.ledger()) == ledger_jsonl(reference_lines(log))


@SETTINGS
@given(st.data())
def test_no_line_key_or_entry_id_twice(data: st.DataObject) -> None:
    log = data.draw(logs())
    state = fold(data.draw(deliveries(log)))
    lines = state.ledger()
    assert len({line.key for line in lines}) == len(lines)
    assert len({line.entry_id for line in lines}) == len(lines)
    assert len(lines) == len(reference_lines(log))


@SETTINGS
@given(st.data())
def test_a_batched_database_consumer_matches_the_projection(data: st.DataObject) -> None:
    """What the database consumer does: bill past its checkpoint, insert lines whose key is new
    (the unique key), fold only the inserted lines into the stored wallets."""
    log = data.draw(logs())
    stored: dict[LineKey, LedgerLine] = {}
    wallets: dict[str, WalletState] = {}
    policy, checkpoint = DEFAULT_POLICY, 0
    for batch in data.draw(deliveries(log)):
        result = bill_events(policy, batch, checkpoint)
        inserted = [line for line in result.lines if line.key not in stored]
        stored.update((line.key, line) for line in inserted)
        touched = {line.tenant_id for line in inserted}
        wallets.update(fold_wallets({t: w for t, w in wallets.items() if t in touched}, inserted))
        policy, checkpoint = result.policy, result.last_seq
    assert digest(stored.values(), wallets) == project(log).digest()


# --------------------------------------------------------------------------- replay


@SETTINGS
@given(st.data())
def test_replay_from_a_snapshot_equals_replay_from_zero(data: st.DataObject) -> None:
    log = data.draw(logs())
    n = data.draw(st.integers(min_value=0, max_value=len(log)))
    snapshot = project(log[:n])
    assert project(log[n:], snapshot) == project(log)
    assert project(log, snapshot) == project(log)


@SETTINGS
@given(st.data())
def test_digest_survives_the_wire_and_any_line_order(data: st.DataObject) -> None:
    log = data.draw(logs())
    state = project(log)
    entries = [
        LedgerEntry.model_validate_json(line.to_entry().model_dump_json())
        for line in state.ledger()
    ]
    data.draw(st.randoms(use_true_random=False)).shuffle(entries)
    wires = [wallet.to_wire() for wallet in state.wallets.values()]
    assert digest(entries, wires) == state.digest()
    assert {LedgerLine.from_entry(e).key: LedgerLine.from_entry(e) for e in entries} == dict(
        state.lines
    )


# --------------------------------------------------------------------------- money


@SETTINGS
@given(logs())
def test_wallet_totals_equal_the_sum_of_their_lines(log: list[LogEvent[Payload]]) -> None:
    state = project(log)
    sums: dict[tuple[str, LineItemType], Decimal] = defaultdict(lambda: ZERO)
    last: dict[str, int] = {}
    for line in state.ledger():
        sums[(line.tenant_id, line.line_item_type)] += line.amount_usd
        last[line.tenant_id] = max(last.get(line.tenant_id, 0), line.source_seq)
    assert set(state.wallets) == set(last)
    for tenant, wallet in state.wallets.items():
        for kind in LineItemType:
            assert wallet.totals[kind] == sums[(tenant, kind)]
        assert wallet.total_usd == sum(wallet.totals.values(), ZERO)
        assert wallet.as_of_seq == last[tenant]


@SETTINGS
@given(logs())
def test_every_amount_is_non_negative_6dp_and_recomputable(log: list[LogEvent[Payload]]) -> None:
    for line in project(log).ledger():
        assert line.amount_usd >= 0
        assert line.amount_usd.as_tuple().exponent == -6
        assert recompute_amount(line) == line.amount_usd


@SETTINGS
@given(logs())
def test_stale_claims_are_never_billed(log: list[LogEvent[Payload]]) -> None:
    stale = {e.event_id for e in log if is_stale(e)}
    billed = {line.source_event_id for line in project(log).ledger()}
    assert not stale & billed
    platform = [a for a in find_anomalies(log, project(log).ledger()) if a.kind == "platform_cost"]
    assert {a.source_event_id for a in platform} == stale


@SETTINGS
@given(logs())
def test_llm_tokens_are_billed_from_one_source_only(log: list[LogEvent[Payload]]) -> None:
    """Each billed LLM line comes from the source the policy in force chose, and a policy event
    with both flags on is never applied."""
    state = project(log)
    policy = DEFAULT_POLICY
    source_of: dict[str, BillingPolicy] = {}
    conflicts = []
    for event in log:
        source_of[event.event_id] = policy
        payload = event.payload
        if (
            isinstance(payload, BillingPolicyChanged)
            and payload.bill_llm_from_workunit_completed
            and payload.bill_llm_from_invocation
        ):
            conflicts.append(event.event_id)
        policy = fold_policy(policy, event)
    assert list(state.flag_conflicts) == conflicts
    assert state.policy == policy
    by_id = {e.event_id: e for e in log}
    for line in state.ledger():
        if line.line_item_type != LineItemType.LLM_TOKENS:
            continue
        in_force = source_of[line.source_event_id]
        if by_id[line.source_event_id].type == "workunit.completed":
            assert in_force.bill_llm_from_workunit_completed
        else:
            assert in_force.bill_llm_from_invocation


@given(st.booleans(), st.booleans())
def test_both_flags_on_is_always_refused(from_completed: bool, from_invocation: bool) -> None:
    if from_completed and from_invocation:
        with pytest.raises(BillingFlagsError):
            BillingPolicy(from_completed, from_invocation)
    else:
        assert BillingPolicy(from_completed, from_invocation).bill_llm_from_invocation == (
            from_invocation
        )


# --------------------------------------------------------------------------- anomalies


@SETTINGS
@given(logs())
def test_the_projections_own_ledger_has_only_expected_anomalies(
    log: list[LogEvent[Payload]],
) -> None:
    kinds = Counter(a.kind for a in find_anomalies(log, project(log).ledger()))
    assert set(kinds) <= {"platform_cost", "flag_misconfiguration"}


@SETTINGS
@given(st.data())
def test_a_dropped_or_doubled_line_is_reported(data: st.DataObject) -> None:
    log = data.draw(logs())
    lines = project(log).ledger()
    if not lines:
        return
    victim = data.draw(st.sampled_from(lines))
    dropped = [line for line in lines if line is not victim]
    missing = [a for a in find_anomalies(log, dropped) if a.kind == "missing_line"]
    assert [a.source_event_id for a in missing] == [victim.source_event_id]
    doubled = [a for a in find_anomalies(log, [*lines, victim]) if a.kind == "duplicate_line"]
    assert [a.source_event_id for a in doubled] == [victim.source_event_id]
    orphaned = [e for e in log if e.event_id != victim.source_event_id]
    orphans = [a for a in find_anomalies(orphaned, lines) if a.kind == "orphan_line"]
    assert {a.source_event_id for a in orphans} == {victim.source_event_id}


def test_the_strategies_cover_the_interesting_cases() -> None:
    """A sanity check that random logs do include conflicts, stale claims and usage lines."""
    seen: Counter[str] = Counter()

    @settings(max_examples=200, deadline=None, database=None)
    @given(logs())
    def collect(log: list[LogEvent[Payload]]) -> None:
        state = project(log)
        seen["conflict"] += bool(state.flag_conflicts)
        seen["stale"] += any(is_stale(e) for e in log)
        seen["usage_line"] += any(line.sub_key for line in state.lines.values())

    collect()
    assert all(seen[k] > 0 for k in ("conflict", "stale", "usage_line")), seen
