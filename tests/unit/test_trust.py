"""Trust: the score fold, quarantine with hysteresis, probation, rebuild determinism; health."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.fleet.trust_model import (
    Observation,
    Outcome,
    TrustParams,
    TrustState,
    apply,
    fold,
    health_for,
    initial_state,
    node_of,
    observation_of,
    tick,
)
from shared.enums import NodeHealth
from shared.events import (
    CpuPricing,
    NodeHealthChanged,
    Payload,
    WorkUnitClaimed,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitLeaseExpired,
    WorkUnitSubmitted,
)

P = TrustParams()
NODE = "n1"
AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
STAMP = CpuPricing(usd_per_cpu_s="0.00005", price_version=1)


def health(from_: NodeHealth, to: NodeHealth) -> NodeHealthChanged:
    return NodeHealthChanged(node_id=NODE, from_=from_, to=to, reason="x")


# payloads as the log stores them (what a fold of the log reads)
COMPLETED_EVENT = WorkUnitCompleted(node_id=NODE, attempt=1, cpu_ms=5, pricing=STAMP)
FAILED_EVENT = WorkUnitFailed(node_id=NODE, attempt=1, retryable=True, requeued=True)
EXPIRED_EVENT = WorkUnitLeaseExpired(node_id=NODE, attempt=1, requeued=True)
UNHEALTHY_EVENT = health(NodeHealth.SUSPECT, NodeHealth.UNHEALTHY)
SUSPECT_EVENT = health(NodeHealth.HEALTHY, NodeHealth.SUSPECT)
HEALTHY_EVENT = health(NodeHealth.SUSPECT, NodeHealth.HEALTHY)
OTHER_EVENT = WorkUnitClaimed(node_id=NODE, attempt=1, lease_expires_at=AT)


# what each of them tells trust
COMPLETED = Outcome.COMPLETED
FAILED = Outcome.FAILED
EXPIRED = Outcome.LEASE_EXPIRED
UNHEALTHY = NodeHealth.UNHEALTHY
SUSPECT = NodeHealth.SUSPECT
HEALTHY = NodeHealth.HEALTHY


def run(state: TrustState, observations: list[Observation], at: float = 0.0):
    changes = []
    for observation in observations:
        state, change = apply(state, observation, P, at)
        if change is not None:
            changes.append(change)
    return state, changes


def test_the_logs_events_are_read_as_their_observations():
    assert observation_of(COMPLETED_EVENT) is COMPLETED
    assert observation_of(FAILED_EVENT) is FAILED
    assert observation_of(EXPIRED_EVENT) is EXPIRED
    assert observation_of(UNHEALTHY_EVENT) is UNHEALTHY
    assert observation_of(SUSPECT_EVENT) is SUSPECT
    assert observation_of(HEALTHY_EVENT) is HEALTHY
    assert observation_of(OTHER_EVENT) is None


def test_completions_raise_failures_lower():
    start = initial_state(P)
    assert start.score == 0.8 and not start.quarantined
    up, _ = run(start, [COMPLETED])
    assert up.score == pytest.approx(0.82)
    for bad in (FAILED, EXPIRED, UNHEALTHY):
        down, _ = run(start, [bad])
        assert down.score == pytest.approx(0.72)
    for neutral in (SUSPECT, HEALTHY):
        same, change = apply(start, neutral, P, 0.0)
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
    assert payload.model_dump(mode="json", by_alias=True) == {
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
    assert node_of(COMPLETED_EVENT) == NODE
    assert node_of(UNHEALTHY_EVENT) == NODE
    assert node_of(WorkUnitFailed(attempt=1, retryable=False, requeued=False)) is None
    submitted = WorkUnitSubmitted.model_validate(
        {
            "kind": "cpu",
            "execution_session_id": "s",
            "priority": "p1",
            "payload": {"node_id": NODE},
            "max_attempts": 1,
        }
    )
    assert node_of(submitted) is None


# --------------------------------------------------------------------------- properties

# runs of the same event, so that quarantine, probation and recovery all happen
events_st = st.lists(
    st.tuples(
        st.sampled_from(
            [
                COMPLETED_EVENT,
                COMPLETED_EVENT,
                FAILED_EVENT,
                EXPIRED_EVENT,
                UNHEALTHY_EVENT,
                SUSPECT_EVENT,
                OTHER_EVENT,
                None,
            ]
        ),
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
    log: list[tuple[Payload, float | None]] = []
    now = 0.0
    for step, dt in steps:
        now += dt
        change = None
        if step is None:
            live, change = tick(live, now, P)
        else:
            log.append((step, now))
            observation = observation_of(step)
            if observation is not None:
                before = live
                live, change = apply(live, observation, P, now)
                if change is not None:
                    moved = abs(change.to_score - change.from_score) >= P.epsilon
                    assert moved or change.quarantined != before.quarantined
        assert 0.0 <= live.score <= 1.0
        if change is not None:
            log.append((change.payload(NODE), now))
    # the fold of the log: each stored payload read as what it tells trust
    observations: list[tuple[Observation, float | None]] = []
    for payload, at in log:
        observation = observation_of(payload)
        if observation is not None:
            observations.append((observation, at))
    assert fold(observations, P) == live
    assert fold(observations, P) == fold(list(observations), P)


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
