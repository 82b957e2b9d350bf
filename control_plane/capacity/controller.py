"""The capacity controller: admission mode and desired nodes from live metrics (pure).

``decide`` runs on every autoscaler tick with the metrics of that moment and the state the
previous tick returned; it returns the new state and the decisions to append as events
(``capacity.admission.mode.changed``, ``capacity.scale.requested``), each carrying the inputs
that led to it.

Admission mode, with hysteresis
-------------------------------
Signals: *backlog per slot* (queued units / total slots) and the *oldest queued age*, each
over the priorities a mode schedules (OPEN: all; THROTTLED: p0-p1; CRITICAL: p0), and
*utilization* (1 - free slots / total slots).

- Up (only while capacity is saturated, utilization >= ``saturated_utilization``; backlog
  with free slots drains at the next placement pass and is no reason to refuse work):
  to THROTTLED when the backlog of all priorities or its age reaches the ``throttle_up_*``
  thresholds; to CRITICAL (from OPEN or THROTTLED) when the p0-p1 backlog or age reaches the
  ``critical_up_*`` ones.
- Down, one level at a time: CRITICAL to THROTTLED when the p0-p1 backlog and age are below
  the ``critical_down_*`` thresholds; THROTTLED to OPEN when the backlog of all priorities and
  its age are below ``throttle_down_*``. Either also happens when utilization has stayed below
  ``idle_utilization`` for ``idle_hold_s``: a restrictive mode must not leave capacity idle
  while it holds work (if the held work refills it, the mode goes up again, no sooner than
  ``min_hold_s``). The idle hold ignores a lone sample taken between a completion and the
  placement that refills the slot.
- A mode holds at least ``min_hold_s``; the up thresholds sit above the down ones, so noise
  between them changes nothing.
- While a manual override is active the mode is left alone (scaling goes on).

Desired nodes
-------------
``desired_slots = max(running / target_utilization, (running + queued) /
(1 + target_backlog_per_slot))`` (every queued unit counts, held ones too: capacity is how
held work eventually runs), divided by the slots per healthy node, clamped to
``[min_nodes, max_nodes]``. Scaling up is immediate (at most every ``scale_up_cooldown_s``);
scaling down waits until the recommendation has stayed lower for ``scale_down_window_s`` and
then goes to the highest recommendation seen in that window, so noise does not flap it.

The state mirrors the log: ``mode`` and ``mode_since`` are the mode in force and when it
began (a manual change included), ``desired_nodes`` the last requested target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.enums import CapacityMode

__all__ = [
    "ControllerParams",
    "ControllerState",
    "Decision",
    "Metrics",
    "ModeChange",
    "ScaleRequest",
    "decide",
    "desired_nodes_for",
    "initial_state",
    "signals",
]

_PRIORITY_KEYS = tuple(f"p{i}" for i in range(10))
_MAX_LEVEL = {CapacityMode.OPEN: 9, CapacityMode.THROTTLED: 1, CapacityMode.CRITICAL: 0}
_RANK = {CapacityMode.OPEN: 0, CapacityMode.THROTTLED: 1, CapacityMode.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Metrics:
    """Live metrics of one tick.

    ``queue_depth``: queued units by priority (``"p0"`` .. ``"p9"``, missing = 0).
    ``total_slots`` / ``free_slots``: max_concurrency summed over healthy, schedulable nodes,
    and what is left of it. ``oldest_age_by_priority`` (optional): age in seconds of the oldest
    queued unit of each priority; without it ``oldest_queued_age_s`` stands for every priority.
    """

    queue_depth: Mapping[str, int]
    running: int
    healthy_nodes: int
    free_slots: int
    total_slots: int
    oldest_queued_age_s: float
    oldest_age_by_priority: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class ControllerParams:
    """Thresholds and limits. ``*_up_*`` must be at or above the matching ``*_down_*``."""

    throttle_up_backlog_per_slot: float = 4.0
    throttle_down_backlog_per_slot: float = 1.0
    throttle_up_age_s: float = 120.0
    throttle_down_age_s: float = 30.0
    critical_up_backlog_per_slot: float = 16.0
    critical_down_backlog_per_slot: float = 4.0
    critical_up_age_s: float = 600.0
    critical_down_age_s: float = 120.0
    saturated_utilization: float = 0.9
    idle_utilization: float = 0.5
    idle_hold_s: float = 0.0
    min_hold_s: float = 30.0
    min_nodes: int = 0
    max_nodes: int = 10
    target_utilization: float = 0.8
    target_backlog_per_slot: float = 1.0
    default_slots_per_node: int = 4
    scale_up_cooldown_s: float = 10.0
    scale_down_window_s: float = 120.0

    def __post_init__(self) -> None:
        pairs = (
            (self.throttle_up_backlog_per_slot, self.throttle_down_backlog_per_slot),
            (self.throttle_up_age_s, self.throttle_down_age_s),
            (self.critical_up_backlog_per_slot, self.critical_down_backlog_per_slot),
            (self.critical_up_age_s, self.critical_down_age_s),
            (self.saturated_utilization, self.idle_utilization),
        )
        if any(up < down for up, down in pairs):
            raise ValueError("an up threshold is below its down threshold (no hysteresis)")
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError("need 0 <= min_nodes <= max_nodes")
        if not 0.0 < self.target_utilization <= 1.0:
            raise ValueError("target_utilization must be in (0, 1]")
        if self.idle_hold_s < 0 or self.min_hold_s < 0:
            raise ValueError("idle_hold_s and min_hold_s must be >= 0")
        if self.target_backlog_per_slot < 0 or self.default_slots_per_node < 1:
            raise ValueError("target_backlog_per_slot >= 0 and default_slots_per_node >= 1")


@dataclass(frozen=True, slots=True)
class ControllerState:
    """What the controller carries between ticks (rebuilt from the log after a restart:
    the mode in force and since when, the last scale request's target and time).

    ``low_since`` / ``low_max``: since when the node recommendation has stayed below
    ``desired_nodes``, and the highest recommendation in that window (scale-down smoothing).
    ``idle_since``: since when utilization has stayed below ``idle_utilization``.
    """

    mode: CapacityMode = CapacityMode.OPEN
    mode_since: float = -math.inf
    desired_nodes: int = 0
    last_scale_at: float | None = None
    low_since: float | None = None
    low_max: int = 0
    idle_since: float | None = None


@dataclass(frozen=True, slots=True)
class ModeChange:
    """Change the admission mode (``capacity.admission.mode.changed``, source autoscaler)."""

    from_mode: CapacityMode
    to_mode: CapacityMode
    reason: str
    inputs: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The event payload."""
        return {
            "from": self.from_mode.value,
            "to": self.to_mode.value,
            "reason": self.reason,
            "source": "autoscaler",
            "inputs": self.inputs,
        }


@dataclass(frozen=True, slots=True)
class ScaleRequest:
    """Change the desired node count (``capacity.scale.requested``)."""

    from_nodes: int
    to_nodes: int
    reason: str
    inputs: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The event payload."""
        return {
            "from": self.from_nodes,
            "to": self.to_nodes,
            "reason": self.reason,
            "inputs": self.inputs,
        }


Decision = ModeChange | ScaleRequest


def initial_state(
    mode: CapacityMode = CapacityMode.OPEN,
    mode_since: float = -math.inf,
    desired_nodes: int = 0,
    last_scale_at: float | None = None,
) -> ControllerState:
    """A state from what the log says (defaults: a fresh system, free to act at once)."""
    return ControllerState(CapacityMode(mode), mode_since, desired_nodes, last_scale_at)


def _backlog(metrics: Metrics, max_level: int) -> tuple[int, float]:
    keys = _PRIORITY_KEYS[: max_level + 1]
    queued = sum(max(0, metrics.queue_depth.get(k, 0)) for k in keys)
    if metrics.oldest_age_by_priority is None or max_level == 9:
        age = metrics.oldest_queued_age_s if queued else 0.0
    else:
        ages = metrics.oldest_age_by_priority
        age = max((ages.get(k, 0.0) for k in keys), default=0.0)
    return queued, max(0.0, age)


def signals(metrics: Metrics) -> dict[str, Any]:
    """The inputs every decision records (JSON-serializable)."""
    slots = max(1, metrics.total_slots)
    all_q, all_age = _backlog(metrics, 9)
    hi_q, hi_age = _backlog(metrics, 1)
    if metrics.total_slots > 0:
        utilization = 1.0 - max(0, metrics.free_slots) / metrics.total_slots
    else:
        utilization = 1.0 if all_q else 0.0
    return {
        "queue_depth": {k: int(metrics.queue_depth.get(k, 0)) for k in _PRIORITY_KEYS},
        "queued": all_q,
        "queued_p0_p1": hi_q,
        "running": metrics.running,
        "healthy_nodes": metrics.healthy_nodes,
        "total_slots": metrics.total_slots,
        "free_slots": metrics.free_slots,
        "utilization": round(min(1.0, max(0.0, utilization)), 6),
        "backlog_per_slot": round(all_q / slots, 6),
        "backlog_per_slot_p0_p1": round(hi_q / slots, 6),
        "oldest_queued_age_s": round(all_age, 3),
        "oldest_queued_age_s_p0_p1": round(hi_age, 3),
    }


def _target_mode(
    mode: CapacityMode, s: Mapping[str, Any], p: ControllerParams, idle: bool
) -> tuple[CapacityMode, str]:
    """Where the signals push ``mode`` (at most one level down), and why. ``idle``:
    utilization has stayed below ``idle_utilization`` for ``idle_hold_s``."""
    util = s["utilization"]
    saturated = util >= p.saturated_utilization
    bps, age = s["backlog_per_slot"], s["oldest_queued_age_s"]
    hi_bps, hi_age = s["backlog_per_slot_p0_p1"], s["oldest_queued_age_s_p0_p1"]
    busy = f"utilization {util:.2f} >= {p.saturated_utilization}"

    if saturated and mode != CapacityMode.CRITICAL:
        if hi_bps >= p.critical_up_backlog_per_slot:
            why = f"p0-p1 backlog {hi_bps} per slot >= {p.critical_up_backlog_per_slot}"
            return CapacityMode.CRITICAL, f"{why}, {busy}"
        if hi_age >= p.critical_up_age_s:
            why = f"oldest p0-p1 unit waited {hi_age}s >= {p.critical_up_age_s}s"
            return CapacityMode.CRITICAL, f"{why}, {busy}"
    if saturated and mode == CapacityMode.OPEN:
        if bps >= p.throttle_up_backlog_per_slot:
            why = f"backlog {bps} per slot >= {p.throttle_up_backlog_per_slot}"
            return CapacityMode.THROTTLED, f"{why}, {busy}"
        if age >= p.throttle_up_age_s:
            why = f"oldest unit waited {age}s >= {p.throttle_up_age_s}s"
            return CapacityMode.THROTTLED, f"{why}, {busy}"

    if mode == CapacityMode.CRITICAL:
        if idle:
            return CapacityMode.THROTTLED, _idle_reason(util, p)
        if hi_bps < p.critical_down_backlog_per_slot and hi_age < p.critical_down_age_s:
            return CapacityMode.THROTTLED, (
                f"p0-p1 backlog {hi_bps} per slot < {p.critical_down_backlog_per_slot} "
                f"and oldest {hi_age}s < {p.critical_down_age_s}s"
            )
    if mode == CapacityMode.THROTTLED:
        if idle:
            return CapacityMode.OPEN, _idle_reason(util, p)
        if bps < p.throttle_down_backlog_per_slot and age < p.throttle_down_age_s:
            return CapacityMode.OPEN, (
                f"backlog {bps} per slot < {p.throttle_down_backlog_per_slot} "
                f"and oldest {age}s < {p.throttle_down_age_s}s"
            )
    return mode, ""


def _idle_reason(util: float, p: ControllerParams) -> str:
    held = f" for {p.idle_hold_s}s" if p.idle_hold_s else ""
    return f"utilization {util:.2f} < {p.idle_utilization}{held}"


def desired_nodes_for(metrics: Metrics, params: ControllerParams) -> int:
    """The node count the metrics call for, clamped to ``[min_nodes, max_nodes]``."""
    queued, _ = _backlog(metrics, 9)
    running = max(0, metrics.running)
    if metrics.healthy_nodes > 0 and metrics.total_slots > 0:
        per_node = metrics.total_slots / metrics.healthy_nodes
    else:
        per_node = float(params.default_slots_per_node)
    slots = max(
        running / params.target_utilization,
        (running + queued) / (1.0 + params.target_backlog_per_slot),
    )
    # a tiny tolerance so that 8.000000001 slots of float noise do not ask for another node
    nodes = math.ceil(slots / per_node - 1e-9)
    return min(params.max_nodes, max(params.min_nodes, nodes))


def decide(
    state: ControllerState,
    metrics: Metrics,
    now: float,
    params: ControllerParams,
    override_active: bool,
) -> tuple[ControllerState, list[Decision]]:
    """One controller tick at ``now`` (seconds, the control plane's clock).

    Returns the next state and the decisions to append, mode change first. With
    ``override_active`` the mode is never changed (scale requests still are).
    """
    inputs = signals(metrics)
    decisions: list[Decision] = []
    idle_since = None
    if inputs["utilization"] < params.idle_utilization:
        idle_since = now if state.idle_since is None else state.idle_since
    new = replace(state, idle_since=idle_since)
    idle = idle_since is not None and now - idle_since >= params.idle_hold_s

    if not override_active and now - state.mode_since >= params.min_hold_s:
        target, reason = _target_mode(state.mode, inputs, params, idle)
        if target != state.mode:
            decisions.append(ModeChange(state.mode, target, reason, dict(inputs)))
            new = replace(new, mode=target, mode_since=now)

    want = desired_nodes_for(metrics, params)
    current = state.desired_nodes
    scale_inputs = {**inputs, "recommended_nodes": want}
    if current < params.min_nodes or current > params.max_nodes:
        to = min(params.max_nodes, max(params.min_nodes, current))
        reason = f"desired {current} outside [{params.min_nodes}, {params.max_nodes}]"
        decisions.append(ScaleRequest(current, to, reason, scale_inputs))
        new = replace(new, desired_nodes=to, last_scale_at=now, low_since=None, low_max=0)
    elif want > current:
        cooled = state.last_scale_at is None or now - state.last_scale_at >= (
            params.scale_up_cooldown_s
        )
        new = replace(new, low_since=None, low_max=0)
        if cooled:
            reason = _scale_reason("up", inputs, want)
            decisions.append(ScaleRequest(current, want, reason, scale_inputs))
            new = replace(new, desired_nodes=want, last_scale_at=now)
    elif want < current:
        if state.low_since is None:
            new = replace(new, low_since=now, low_max=want)
        else:
            low_max = max(state.low_max, want)
            new = replace(new, low_max=low_max)
            if now - state.low_since >= params.scale_down_window_s and low_max < current:
                reason = _scale_reason("down", inputs, low_max) + (
                    f" (highest recommendation over {params.scale_down_window_s}s)"
                )
                scale_inputs["window_s"] = params.scale_down_window_s
                decisions.append(ScaleRequest(current, low_max, reason, scale_inputs))
                new = replace(
                    new, desired_nodes=low_max, last_scale_at=now, low_since=None, low_max=0
                )
    else:
        new = replace(new, low_since=None, low_max=0)
    return new, decisions


def _scale_reason(direction: str, s: Mapping[str, Any], want: int) -> str:
    return (
        f"scale {direction} to {want}: {s['running']} running, {s['queued']} queued, "
        f"{s['total_slots']} slots on {s['healthy_nodes']} healthy nodes"
    )
