"""The capacity controller: mode ladder with hysteresis and hold, override, scaling."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.capacity.controller import (
    ControllerParams,
    ControllerState,
    Decision,
    Metrics,
    ModeChange,
    ScaleRequest,
    decide,
    desired_nodes_for,
    initial_state,
)
from shared.enums import CapacityMode

OPEN, THROTTLED, CRITICAL = CapacityMode.OPEN, CapacityMode.THROTTLED, CapacityMode.CRITICAL
RANK = {OPEN: 0, THROTTLED: 1, CRITICAL: 2}
P = ControllerParams()


def metrics(
    queued: int,
    *,
    total_slots: int = 20,
    free_slots: int | None = None,
    healthy_nodes: int = 5,
    age: float = 10.0,
    split: tuple[float, float, float] = (0.4, 0.4, 0.2),
    running: int | None = None,
) -> Metrics:
    p0 = int(queued * split[0])
    p1 = int(queued * split[1])
    p5 = queued - p0 - p1
    if free_slots is None:
        free_slots = 0 if queued else total_slots
    return Metrics(
        queue_depth={"p0": p0, "p1": p1, "p5": p5},
        running=total_slots - free_slots if running is None else running,
        healthy_nodes=healthy_nodes,
        free_slots=free_slots,
        total_slots=total_slots,
        oldest_queued_age_s=age if queued else 0.0,
        oldest_age_by_priority={"p0": age, "p1": age, "p5": age} if queued else {},
    )


def simulate(
    series: list[tuple[float, Metrics]],
    params: ControllerParams = P,
    state: ControllerState | None = None,
    override: bool = False,
) -> tuple[ControllerState, list[tuple[float, Decision]]]:
    state = state if state is not None else initial_state(desired_nodes=5)
    out: list[tuple[float, Decision]] = []
    for now, m in series:
        state, decisions = decide(state, m, now, params, override)
        out.extend((now, d) for d in decisions)
    return state, out


def modes(decisions: list[tuple[float, Decision]]) -> list[CapacityMode]:
    changes = [d for _, d in decisions if isinstance(d, ModeChange)]
    return [OPEN, *(c.to_mode for c in changes)]


def test_pressure_ramp_goes_up_the_ladder_and_back_down():
    up = [min(600, 4 * i) for i in range(200)]
    down = [max(0, 600 - 4 * i) for i in range(200)]
    queue = up + [600] * 30 + down + [0] * 100
    series = [(2.0 * i, metrics(q)) for i, q in enumerate(queue)]
    state, decisions = simulate(series)
    assert modes(decisions) == [OPEN, THROTTLED, CRITICAL, THROTTLED, OPEN]
    assert state.mode == OPEN
    for _, d in decisions:
        json.dumps(d.payload())
    first = next(d for _, d in decisions if isinstance(d, ModeChange))
    assert first.payload()["source"] == "autoscaler"
    assert first.inputs["backlog_per_slot"] >= P.throttle_up_backlog_per_slot
    assert "backlog" in first.reason
    # and it asked for nodes on the way up, then gave them back
    scales = [d for _, d in decisions if isinstance(d, ScaleRequest)]
    assert scales[0].to_nodes > scales[0].from_nodes
    assert max(s.to_nodes for s in scales) == P.max_nodes
    assert state.desired_nodes == P.min_nodes


def test_backlog_with_free_slots_is_no_reason_to_throttle():
    series = [(2.0 * i, metrics(500, free_slots=10)) for i in range(100)]
    _, decisions = simulate(series)
    assert modes(decisions) == [OPEN]


def test_old_work_throttles_too():
    series = [(2.0 * i, metrics(30, age=2.0 * i)) for i in range(100)]
    _, decisions = simulate(series)
    assert modes(decisions)[:2] == [OPEN, THROTTLED]
    change = next(d for _, d in decisions if isinstance(d, ModeChange))
    assert "waited" in change.reason


def test_a_mode_holds_for_min_hold():
    state = initial_state(mode=THROTTLED, mode_since=100.0)
    calm = metrics(0)
    assert decide(state, calm, 100.0 + P.min_hold_s - 0.1, P, False)[0].mode == THROTTLED
    assert decide(state, calm, 100.0 + P.min_hold_s, P, False)[0].mode == OPEN


def test_steps_down_one_level_at_a_time():
    state = initial_state(mode=CRITICAL, mode_since=0.0)
    new, decisions = decide(state, metrics(0), 1000.0, P, False)
    assert new.mode == THROTTLED and new.mode_since == 1000.0
    assert [d.to_mode for d in decisions if isinstance(d, ModeChange)] == [THROTTLED]


def test_jumps_straight_to_critical_under_heavy_pressure():
    _, decisions = simulate([(0.0, metrics(1000))])
    assert modes(decisions) == [OPEN, CRITICAL]


def test_idle_capacity_releases_a_restrictive_mode():
    # p5 work is held in THROTTLED; slots sit idle: step down so it can run
    held = Metrics({"p5": 500}, 2, 5, 18, 20, 300.0, {"p5": 300.0})
    new, decisions = decide(initial_state(mode=THROTTLED, mode_since=0.0), held, 100.0, P, False)
    assert new.mode == OPEN
    assert "utilization" in decisions[0].reason  # type: ignore[union-attr]


def test_override_keeps_the_mode_but_scaling_goes_on():
    series = [(2.0 * i, metrics(1000)) for i in range(50)]
    state, decisions = simulate(series, override=True)
    assert state.mode == OPEN
    assert not any(isinstance(d, ModeChange) for _, d in decisions)
    assert any(isinstance(d, ScaleRequest) for _, d in decisions)
    # once the override ends the controller decides at its next tick
    state, decisions = decide(state, metrics(1000), 100.0, P, False)
    assert state.mode == CRITICAL


def test_noise_around_one_threshold_changes_the_mode_once():
    # backlog per slot 3.9 / 4.1 / 3.9 ...: one step up, never back (down is below 1.0)
    series = [(2.0 * i, metrics(78 if i % 2 else 82)) for i in range(500)]
    _, decisions = simulate(series)
    assert modes(decisions) == [OPEN, THROTTLED]


# --------------------------------------------------------------------------- properties

samples = st.tuples(
    st.floats(0.5, 10.0),  # seconds since the previous tick
    st.integers(0, 400),  # p0
    st.integers(0, 400),  # p1
    st.integers(0, 800),  # p5
    st.integers(0, 40),  # total slots
    st.floats(0.0, 1.0),  # free fraction
    st.floats(0.0, 900.0),  # oldest age
    st.integers(0, 10),  # healthy nodes
)


def _series(raw: list[tuple[float, int, int, int, int, float, float, int]]):
    now = 0.0
    out = []
    for dt, p0, p1, p5, total, free_frac, age, healthy in raw:
        now += dt
        free = int(total * free_frac)
        ages = {"p0": age, "p1": age * 0.5, "p5": age}
        m = Metrics({"p0": p0, "p1": p1, "p5": p5}, total - free, healthy, free, total, age, ages)
        out.append((now, m))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(samples, max_size=150), st.booleans())
def test_no_flapping_whatever_the_metrics(raw, override):
    series = _series(raw)
    state, decisions = simulate(series, override=override)
    changes = [(t, d) for t, d in decisions if isinstance(d, ModeChange)]
    if override:
        assert changes == []
    last_t = -math.inf
    mode = OPEN
    for t, change in changes:
        assert t - last_t >= P.min_hold_s
        assert change.from_mode == mode and change.to_mode != mode
        if RANK[change.to_mode] < RANK[mode]:
            assert RANK[mode] - RANK[change.to_mode] == 1
        last_t, mode = t, change.to_mode
    assert state.mode == mode

    wants = [(t, desired_nodes_for(m, P)) for t, m in series]
    for t, d in decisions:
        if isinstance(d, ScaleRequest):
            assert P.min_nodes <= d.to_nodes <= P.max_nodes
            if d.to_nodes < d.from_nodes:
                # only after a full window of lower recommendations, to the highest of them
                window = [w for s, w in wants if t - P.scale_down_window_s <= s <= t]
                assert max(window) <= d.to_nodes


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.5, 10.0), st.floats(2.0, 15.0), st.floats(0.0, 0.1)),
        min_size=1,
        max_size=200,
    )
)
def test_noise_inside_the_hysteresis_band_changes_the_mode_at_most_once(raw):
    """Backlog per slot anywhere in [2, 15] (above throttle-down, below critical-up) with
    saturated capacity: once THROTTLED, it stays THROTTLED."""
    now = 0.0
    series = []
    for dt, bps, free_frac in raw:
        now += dt
        queued = int(bps * 20)
        series.append((now, metrics(queued, free_slots=int(20 * free_frac), split=(0.4, 0.4, 0.2))))
    _, decisions = simulate(series)
    assert len([d for _, d in decisions if isinstance(d, ModeChange)]) <= 1


def test_scale_down_waits_for_a_quiet_window():
    # recommendation alternates between needing 10 nodes and needing 2: no scale down
    busy, calm = metrics(0, running=32, free_slots=0), metrics(0, running=6, free_slots=14)
    series = [(2.0 * i, busy if i % 20 == 0 else calm) for i in range(300)]
    _, decisions = simulate(series, state=initial_state(desired_nodes=10))
    assert not any(isinstance(d, ScaleRequest) for _, d in decisions)
    # a quiet window: down to the highest recommendation seen in it
    series = [(2.0 * i, calm) for i in range(100)]
    state, decisions = simulate(series, state=initial_state(desired_nodes=10))
    (request,) = [d for _, d in decisions if isinstance(d, ScaleRequest)]
    assert request.from_nodes == 10 and request.to_nodes == desired_nodes_for(calm, P)
    assert state.desired_nodes == request.to_nodes


def test_scale_up_respects_its_cooldown_and_bounds():
    params = ControllerParams(min_nodes=1, max_nodes=6, scale_up_cooldown_s=10.0)
    state = initial_state(desired_nodes=1)
    state, d1 = decide(state, metrics(10, running=20), 0.0, params, False)
    assert [(d.from_nodes, d.to_nodes) for d in d1 if isinstance(d, ScaleRequest)] == [(1, 6)]
    state = initial_state(desired_nodes=1, last_scale_at=0.0)
    _, d2 = decide(state, metrics(10, running=20), 5.0, params, False)
    assert not any(isinstance(d, ScaleRequest) for d in d2)
    # out-of-bounds desired (params changed) is corrected at once
    _, d3 = decide(initial_state(desired_nodes=0), metrics(0), 0.0, params, False)
    assert [(d.from_nodes, d.to_nodes) for d in d3 if isinstance(d, ScaleRequest)] == [(0, 1)]


def test_desired_nodes_formula():
    # 20 running on 5 nodes of 4 slots at target 0.8 -> 25 slots -> 7 nodes
    assert desired_nodes_for(metrics(0, running=20, free_slots=0), P) == 7
    # 20 running + 60 queued with one queued per slot allowed -> 40 slots -> 10 nodes
    assert desired_nodes_for(metrics(60, running=20), P) == 10
    # nothing to do: min_nodes
    assert desired_nodes_for(metrics(0, running=0), ControllerParams(min_nodes=2)) == 2
    # no nodes yet: default slots per node
    empty = Metrics({"p1": 8}, 0, 0, 0, 0, 1.0)
    assert desired_nodes_for(empty, P) == 1


def test_bad_params():
    with pytest.raises(ValueError):
        ControllerParams(throttle_up_backlog_per_slot=1.0, throttle_down_backlog_per_slot=2.0)
    with pytest.raises(ValueError):
        ControllerParams(min_nodes=5, max_nodes=2)
