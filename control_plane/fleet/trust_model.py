"""Trust and health of a node, as pure functions (no I/O, no clock reads).

Trust is a score in [0, 1] per node, folded from the events about that node: an exponentially
weighted average of outcomes, ``score = (1 - alpha) * score + alpha * outcome``, where a
completion is outcome 1 and a failure, a lease expiry or a change to ``unhealthy`` outcome 0.

Quarantine, with hysteresis:

- a node whose score falls below ``quarantine_below`` is quarantined (placement skips it);
- it recovers when its score is back at ``recover_above`` or more (late completions of units
  it already held can do that) or, since a quarantined node gets no new work, when ``tick``
  finds it has sat out ``probation_s``: its score is then reset to ``recover_above``;
- a recovered node is on probation: falling below ``recover_above`` again quarantines it at
  once; reaching ``probation_clear_above`` ends the probation.

``apply`` and ``tick`` return a ``TrustChange`` only when the score moved at least ``epsilon``
from the last reported value or the quarantine flipped, so ``trust.score.changed`` events do
not flood the log. A ``tick`` release is not derived from other events, so ``apply`` adopts a
``trust.score.changed`` event whose reason is ``probation`` (or ``manual``): folding the log,
including the events the live system appended, rebuilds the same state.

What ``apply`` folds is an ``Observation``, typed: an ``Outcome`` of a unit on the node, the
node's new ``NodeHealth``, or a ``trust.score.changed`` payload. ``observation_of`` and
``node_of`` read them from a stored event's (typed) payload, for a fold of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from shared.enums import NodeHealth
from shared.events import (
    EventType,
    NodeHealthChanged,
    Payload,
    TrustScoreChanged,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitLeaseExpired,
)

__all__ = [
    "ADOPTED_REASONS",
    "Observation",
    "Outcome",
    "TrustChange",
    "TrustParams",
    "TrustState",
    "apply",
    "fold",
    "health_for",
    "initial_state",
    "node_of",
    "observation_of",
    "tick",
]


class Outcome(StrEnum):
    """How a unit ended on the node; the value is the event type that records it (and the
    ``reason`` of the ``trust.score.changed`` it may cause)."""

    COMPLETED = EventType.WORKUNIT_COMPLETED.value
    FAILED = EventType.WORKUNIT_FAILED.value
    LEASE_EXPIRED = EventType.WORKUNIT_LEASE_EXPIRED.value


Observation = Outcome | NodeHealth | TrustScoreChanged
"""What trust folds: a unit's outcome, the node's new health, or a ``trust.score.changed``
payload (adopted when its reason is in ``ADOPTED_REASONS``)."""

_HEALTH_REASON = EventType.NODE_HEALTH_CHANGED.value

#: reasons of ``trust.score.changed`` events that ``apply`` adopts (not derivable from others)
ADOPTED_REASONS = frozenset({"probation", "manual"})


@dataclass(frozen=True, slots=True)
class TrustParams:
    """Tuning of the trust model. Outcomes are in [0, 1]; None means no effect."""

    initial: float = 0.8
    alpha: float = 0.1
    quarantine_below: float = 0.3
    recover_above: float = 0.5
    probation_clear_above: float = 0.6
    probation_s: float = 300.0
    epsilon: float = 0.05
    completed_outcome: float = 1.0
    failed_outcome: float = 0.0
    lease_expired_outcome: float = 0.0
    unhealthy_outcome: float = 0.0
    suspect_outcome: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if not 0.0 <= self.quarantine_below < self.recover_above <= 1.0:
            raise ValueError("need 0 <= quarantine_below < recover_above <= 1 (hysteresis)")
        if self.probation_clear_above < self.recover_above:
            raise ValueError("probation_clear_above must be at least recover_above")


@dataclass(frozen=True, slots=True)
class TrustState:
    """A node's trust: ``score``; ``reported`` is the score last published in a change;
    ``quarantined_at`` (caller's clock, seconds) starts the probation timer."""

    score: float
    quarantined: bool = False
    reported: float | None = None
    quarantined_at: float | None = None
    on_probation: bool = False


@dataclass(frozen=True, slots=True)
class TrustChange:
    """A change worth an event (``trust.score.changed``)."""

    from_score: float
    to_score: float
    reason: str
    quarantined: bool

    def payload(self, node_id: str) -> TrustScoreChanged:
        """The ``trust.score.changed`` payload for ``node_id``. Scores are rounded for reading,
        except in changes that ``apply`` adopts on replay, which must be exact."""
        exact = self.reason in ADOPTED_REASONS
        return TrustScoreChanged(
            node_id=node_id,
            from_=self.from_score if exact else round(self.from_score, 6),
            to=self.to_score if exact else round(self.to_score, 6),
            reason=self.reason,
            quarantined=self.quarantined,
        )


def initial_state(params: TrustParams) -> TrustState:
    """The state of a node never seen before (registration)."""
    return TrustState(score=params.initial, reported=params.initial)


_NODE_EVENTS = (
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitLeaseExpired,
    NodeHealthChanged,
    TrustScoreChanged,
)


def node_of(payload: Payload) -> str | None:
    """The node whose trust the event of ``payload`` concerns, or None if it concerns none."""
    if isinstance(payload, _NODE_EVENTS):
        return payload.node_id
    return None


def observation_of(payload: Payload) -> Observation | None:
    """What the event of ``payload`` tells trust, or None if it tells it nothing."""
    if isinstance(payload, WorkUnitCompleted):
        return Outcome.COMPLETED
    if isinstance(payload, WorkUnitFailed):
        return Outcome.FAILED
    if isinstance(payload, WorkUnitLeaseExpired):
        return Outcome.LEASE_EXPIRED
    if isinstance(payload, NodeHealthChanged):
        return payload.to
    if isinstance(payload, TrustScoreChanged):
        return payload
    return None


def _value(observation: Outcome | NodeHealth, params: TrustParams) -> float | None:
    if observation == Outcome.COMPLETED:
        return params.completed_outcome
    if observation == Outcome.FAILED:
        return params.failed_outcome
    if observation == Outcome.LEASE_EXPIRED:
        return params.lease_expired_outcome
    if observation == NodeHealth.UNHEALTHY:
        return params.unhealthy_outcome
    if observation == NodeHealth.SUSPECT:
        return params.suspect_outcome
    return None


def apply(
    state: TrustState,
    observation: Observation,
    params: TrustParams,
    at: float | None = None,
) -> tuple[TrustState, TrustChange | None]:
    """Fold one observation of this node into its trust.

    ``at`` is the event's ``recorded_at`` (seconds); it starts the probation timer when the
    observation quarantines the node (without it, the next ``tick`` starts it). Observations
    that do not move trust return the state unchanged and no change.
    """
    if isinstance(observation, TrustScoreChanged):
        return _adopt(state, observation, at), None
    outcome = _value(observation, params)
    if outcome is None:
        return state, None
    score = _clamp01((1.0 - params.alpha) * state.score + params.alpha * outcome)
    quarantined = state.quarantined
    on_probation = state.on_probation
    quarantined_at = state.quarantined_at
    if quarantined:
        if score >= params.recover_above:
            quarantined, on_probation, quarantined_at = False, True, None
    else:
        floor = params.recover_above if on_probation else params.quarantine_below
        if score < floor:
            quarantined, on_probation, quarantined_at = True, False, at
        elif on_probation and score >= params.probation_clear_above:
            on_probation = False
    new = TrustState(score, quarantined, state.reported, quarantined_at, on_probation)
    reason = observation.value if isinstance(observation, Outcome) else _HEALTH_REASON
    return _report(state, new, reason, params)


def tick(
    state: TrustState, now: float, params: TrustParams
) -> tuple[TrustState, TrustChange | None]:
    """Let time pass: a node quarantined for ``probation_s`` comes back on probation with its
    score reset to ``recover_above``. The change (reason ``probation``) must be appended as a
    ``trust.score.changed`` event, which ``apply`` adopts on replay."""
    if not state.quarantined:
        return state, None
    if state.quarantined_at is None:
        return replace(state, quarantined_at=now), None
    if now - state.quarantined_at < params.probation_s:
        return state, None
    new = TrustState(
        score=params.recover_above,
        quarantined=False,
        reported=params.recover_above,
        quarantined_at=None,
        on_probation=True,
    )
    return new, TrustChange(_reported(state), params.recover_above, "probation", False)


def fold(
    observations: Iterable[tuple[Observation, float | None]],
    params: TrustParams,
    state: TrustState | None = None,
) -> TrustState:
    """Fold ``(observation, at)`` of one node from ``state`` (default: a new node)."""
    current = state if state is not None else initial_state(params)
    for observation, at in observations:
        current, _ = apply(current, observation, params, at)
    return current


def health_for(last_heartbeat_age_s: float, interval_s: float, timeout_s: float) -> NodeHealth:
    """Health from heartbeat freshness: healthy while the last heartbeat is at most two
    intervals old (one may be late), unhealthy from ``timeout_s`` on, suspect in between."""
    if last_heartbeat_age_s >= timeout_s:
        return NodeHealth.UNHEALTHY
    if last_heartbeat_age_s <= min(2.0 * interval_s, timeout_s):
        return NodeHealth.HEALTHY
    return NodeHealth.SUSPECT


def _adopt(state: TrustState, change: TrustScoreChanged, at: float | None) -> TrustState:
    if change.reason not in ADOPTED_REASONS:
        return state  # derived by apply itself from the events before it
    score = _clamp01(change.to)
    quarantined = change.quarantined
    return TrustState(
        score=score,
        quarantined=quarantined,
        reported=score,
        quarantined_at=(state.quarantined_at if state.quarantined else at) if quarantined else None,
        on_probation=not quarantined and change.reason == "probation",
    )


def _reported(state: TrustState) -> float:
    return state.score if state.reported is None else state.reported


def _report(
    old: TrustState, new: TrustState, reason: str, params: TrustParams
) -> tuple[TrustState, TrustChange | None]:
    last = _reported(old)
    if new.quarantined == old.quarantined and abs(new.score - last) < params.epsilon:
        return new, None
    change = TrustChange(last, new.score, reason, new.quarantined)
    return replace(new, reported=new.score), change


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
