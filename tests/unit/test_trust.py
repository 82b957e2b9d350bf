"""Trust: the score fold, quarantine with hysteresis, probation, rebuild determinism; health."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.fleet.trust_model import (
    TrustParams,
    TrustState,
    apply,
    fold,
    health_for,
    initial_state,
    node_of,
    tick,
)
from shared.enums import NodeHealth

P = TrustParams()
NODE = "n1"


def ev(event_type: str, **payload: Any) -> tuple[str, dict[str, Any]]:
    return event_type, {"node_id": NODE, **payload}


COMPLETED = ev("workunit.completed", attempt=1, cpu_ms=5)
FAILED = ev("workunit.failed", attempt=1, retryable=True, requeued=True)
EXPIRED = ev("workunit.lease_expired", attempt=1, requeued=True)
UNHEALTHY = ev("node.health.changed", **{"from": "suspect", "to": "unhealthy", "reason": "x"})
SUSPECT = ev("node.health.changed", **{"from": "healthy", "to": "suspect", "reason": "x"})
HEALTHY = ev("node.health.changed", **{"from": "suspect", "to": "healthy", "reason": "x"})
OTHER = ev("workunit.claimed", attempt=1)


def run(state: TrustState, events: list[tuple[str, dict[str, Any]]], at: float = 0.0):
    changes = []
    for event_type, payload in events:
        state, change = apply(state, event_type, payload, P, at)
        if change is not None:
            changes.append(change)
    return state, changes


def test_completions_raise_failures_lower():
    start = initial_state(P)
    assert start.score == 0.8 and not start.quarantined
    up, _ = run(start, [COMPLETED])
    assert up.score == pytest.approx(0.82)
    for bad in (FAILED, EXPIRED, UNHEALTHY):
        down, _ = run(start, [bad])
        assert down.score == pytest.approx(0.72)
    for neutral in (SUSPECT, HEALTHY, OTHER):
        same, change = apply(start, *neutral, P, 0.0)
        assert same == start and change is None


def test_a_failing_node_is_quarantined_and_sits_out_probation():
    state, changes = run(initial_state(P), [FAILED] * 10, at=1000.0)
    assert state.quarantined and state.score < P.quarantine_below
    assert changes[-1].quarantined and not any(c.quarantined for c in changes[:-1])
    assert state.quarantined_at == 1000.0
    # not before probation_s
    assert tick(state, 1000.0 + P.probation_s - 1, P) == (state, None)
    back, change = tick(state, 1000.0 + P.probation_s, P)
    assert change is not None and change.reason == "probation" and not change.quarantined
    assert not back.quarantined and back.on_probation and back.score == P.recover_above
    # good behaviour ends probation
    good, _ = run(back, [COMPLETED] * 3)
    assert not good.on_probation and good.score >= P.probation_clear_above
    # one failure on probation sends it straight back
    again, (change,) = run(back, [FAILED], at=5000.0)
    assert again.quarantined and again.quarantined_at == 5000.0
    assert change.quarantined


def test_hysteresis_between_thresholds():
    # a quarantined node whose late completions bring it between the thresholds stays out
    q = TrustState(score=0.29, quarantined=True, reported=0.29, quarantined_at=0.0)
    mid, _ = run(q, [COMPLETED])
    assert 0.3 <= mid.score < 0.5 and mid.quarantined
    # enough of them and it is back (on probation)
    back, changes = run(q, [COMPLETED] * 5)
    assert back.score >= 0.5 and not back.quarantined and back.on_probation
    assert any(not c.quarantined for c in changes)
    # a trusted node between the thresholds is not quarantined
    ok = TrustState(score=0.35, reported=0.35)
    down, _ = run(ok, [FAILED])
    assert down.score < 0.35 and down.score >= 0.3 and not down.quarantined


def test_changes_are_reported_only_when_worth_it():
    # small steps are not reported until their sum reaches epsilon
    state, changes = run(initial_state(P), [COMPLETED] * 2)
    assert changes == [] and state.score == pytest.approx(0.838)
    state, changes = run(state, [COMPLETED])
    assert len(changes) == 1 and changes[0].from_score == 0.8
    assert changes[0].to_score == pytest.approx(0.8542)
    assert state.reported == state.score
    state, changes = run(initial_state(P), [FAILED])
    assert len(changes) == 1 and changes[0].from_score == 0.8
    payload = changes[0].payload(NODE)
    assert payload == {
        "node_id": NODE,
        "from": 0.8,
        "to": 0.72,
        "reason": "workunit.failed",
        "quarantined": False,
    }


def test_quarantined_node_without_a_time_starts_its_clock_at_first_tick():
    state = TrustState(score=0.1, quarantined=True, reported=0.1)
    started, change = tick(state, 50.0, P)
    assert change is None and started.quarantined_at == 50.0
    assert tick(started, 50.0 + P.probation_s, P)[0].on_probation


def test_bad_params():
    with pytest.raises(ValueError):
        TrustParams(quarantine_below=0.6, recover_above=0.5)
    with pytest.raises(ValueError):
        TrustParams(alpha=0.0)


def test_node_of():
    assert node_of(*COMPLETED) == NODE
    assert node_of("workunit.failed", {"node_id": None}) is None
    assert node_of("workunit.submitted", {"node_id": NODE}) is None


# --------------------------------------------------------------------------- properties

# runs of the same event, so that quarantine, probation and recovery all happen
events_st = st.lists(
    st.tuples(
        st.sampled_from([COMPLETED, COMPLETED, FAILED, EXPIRED, UNHEALTHY, SUSPECT, OTHER, None]),
        st.integers(1, 12),
        st.floats(0.0, 200.0),
    ),
    max_size=40,
).map(lambda runs: [(step, dt) for step, n, dt in runs for _ in range(n)])


@settings(max_examples=300, deadline=None)
@given(events_st)
def test_rebuilding_from_the_log_gives_the_same_state(steps):
    """The live loop folds events and ticks, appending every change it reports as a
    ``trust.score.changed`` event; folding that log from scratch gives the same state."""
    live = initial_state(P)
    log: list[tuple[str, dict[str, Any], float | None]] = []
    now = 0.0
    for step, dt in steps:
        now += dt
        if step is None:
            live, change = tick(live, now, P)
        else:
            event_type, payload = step
            log.append((event_type, payload, now))
            before = live
            live, change = apply(live, event_type, payload, P, now)
            if change is not None:
                moved = abs(change.to_score - change.from_score) >= P.epsilon
                assert moved or change.quarantined != before.quarantined
        assert 0.0 <= live.score <= 1.0
        if change is not None:
            log.append(("trust.score.changed", change.payload(NODE), now))
    assert fold(log, P) == live
    assert fold(log, P) == fold(list(log), P)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40))
def test_enough_failures_always_quarantine(extra_successes):
    state, _ = run(initial_state(P), [COMPLETED] * extra_successes)
    for _ in range(100):
        state, _ = run(state, [FAILED])
        if state.quarantined:
            break
    assert state.quarantined


# --------------------------------------------------------------------------- health


@pytest.mark.parametrize(
    ("age", "health"),
    [
        (0.0, NodeHealth.HEALTHY),
        (-3.0, NodeHealth.HEALTHY),
        (10.0, NodeHealth.HEALTHY),
        (10.1, NodeHealth.SUSPECT),
        (29.9, NodeHealth.SUSPECT),
        (30.0, NodeHealth.UNHEALTHY),
        (1e9, NodeHealth.UNHEALTHY),
    ],
)
def test_health_from_heartbeat_age(age, health):
    assert health_for(age, interval_s=5.0, timeout_s=30.0) == health


def test_health_with_a_tight_timeout():
    assert health_for(5.0, interval_s=4.0, timeout_s=6.0) == NodeHealth.HEALTHY
    assert health_for(6.0, interval_s=4.0, timeout_s=6.0) == NodeHealth.UNHEALTHY
