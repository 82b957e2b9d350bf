"""Placement: which node runs each unit of a batch, and why (pure, no I/O, no clock).

``place_batch`` takes units already in scheduling order (see ``ordering.fair_order``) and a
snapshot of the fleet, and places each unit in turn on the best eligible node:

1. **Hard filter** (a node failing one is *excluded*, with the first reason in this order):
   ``region_mismatch`` (the unit names a region and the node is elsewhere),
   ``kind_unsupported``, ``drained``, ``quarantined``, ``unhealthy``, ``full``
   (``running + placed in this batch >= max_concurrency``).
2. **Score** of each eligible node, a weighted sum of components in [0, 1]:
   ``free_capacity`` (free slots / max_concurrency), ``load`` (1 - the node's utilization:
   its reported ``load`` if the agent sent one, else running / max_concurrency; every unit
   placed in this batch adds 1 / max_concurrency), ``trust`` (the trust score) and
   ``region_match`` (1 when the unit names a region and the node is in it, else 0; it is the
   same for every candidate of a unit, so it never reorders them, but keeps scores of
   region-bound and free units on one scale).
3. **Ties** break by node id, lowest first, so the same inputs give the same placement,
   whatever the order of ``nodes``.
4. **Anti-affinity**: a session's unit does not go to the node that already took the last
   ``streak_limit`` units of that session in a row, while another eligible node exists; the
   next best is chosen instead.

Each placement carries a JSON-serializable ``decision`` that explains it from the log alone
(candidates with scores and components, exclusions with reasons, the weights, the rule that
chose). For big fleets the lists are capped and exclusions are also counted by reason.

Cost: nodes are scored once per batch; each (kind, region) seen in the batch gets a heap of
its eligible nodes, and only the chosen node is re-scored after a placement (scores only go
down as slots fill, so stale heap entries are refreshed lazily when they surface). A
placement costs O((explain_top + fanout) log nodes).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EXCLUSION_REASONS",
    "NodeView",
    "Placement",
    "PlacementResult",
    "PlacementWeights",
    "Placer",
    "Streaks",
    "UnitView",
    "place_batch",
]

#: Exclusion reasons, in the order they are checked (a node reports the first that applies).
EXCLUSION_REASONS: tuple[str, ...] = (
    "region_mismatch",
    "kind_unsupported",
    "drained",
    "quarantined",
    "unhealthy",
    "full",
)

#: execution_session_id -> (node id of the session's last placement, consecutive count there)
Streaks = dict[str, tuple[str, int]]


@dataclass(frozen=True, slots=True)
class NodeView:
    """What placement needs to know about a node.

    ``running`` counts the units scheduled on it or claimed by it (offered units included), so
    ``max_concurrency - running`` is what may still be placed. ``load`` is the agent's reported
    utilization in [0, 1] (heartbeat ``load``), or None to derive it from ``running``.
    """

    node_id: str
    region: str | None
    supported_kinds: frozenset[str]
    max_concurrency: int
    running: int
    healthy: bool
    quarantined: bool
    drained: bool
    trust: float
    load: float | None = None


@dataclass(frozen=True, slots=True)
class UnitView:
    """What placement and ordering need to know about a queued unit.

    ``priority`` is the level (0 is highest, p0); ``seq`` is the submission order (the seq of
    its ``workunit.submitted`` event, or of its requeue), used for FIFO within a tenant.
    """

    id: str
    tenant_id: str
    kind: str
    priority: int
    region: str | None
    execution_session_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class PlacementWeights:
    """Weights of the score components and the anti-affinity streak limit (from settings)."""

    free_capacity: float = 1.0
    load: float = 0.5
    trust: float = 1.0
    region_match: float = 0.5
    streak_limit: int = 3

    def as_dict(self) -> dict[str, float | int]:
        """The weights as a JSON object, recorded in every decision."""
        return {
            "free_capacity": self.free_capacity,
            "load": self.load,
            "trust": self.trust,
            "region_match": self.region_match,
            "streak_limit": self.streak_limit,
        }


@dataclass(frozen=True, slots=True)
class Placement:
    """One unit placed: ``node_id`` chose it; ``offered_to`` are the nodes that may claim it
    (``node_id`` first, then the next best, up to the fanout); ``decision`` explains why."""

    unit_id: str
    node_id: str
    offered_to: tuple[str, ...]
    decision: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """The placements in unit order, the updated streaks, and the ids of units no node could
    take in this batch (they stay queued)."""

    placements: tuple[Placement, ...]
    streaks: Streaks = field(default_factory=dict)
    unplaced: tuple[str, ...] = ()


# A heap entry: (-score, node_id, node index, version). Keys are unique (node ids are), so
# the index and version never take part in comparisons.
_Entry = tuple[float, str, int, int]


class _Fleet:
    """Per-batch mutable scratch state over the nodes, by index (sorted by node id)."""

    __slots__ = (
        "free",
        "full_lists",
        "ids",
        "kinds",
        "load",
        "maxc",
        "n",
        "node_pools",
        "placed",
        "region_index",
        "regions",
        "state_reason",
        "static",
        "trust",
        "trust_shown",
        "version",
        "weights",
    )

    def __init__(self, nodes: Sequence[NodeView], weights: PlacementWeights) -> None:
        ordered = sorted(nodes, key=lambda n: n.node_id)
        self.n = len(ordered)
        self.weights = weights
        self.ids = [n.node_id for n in ordered]
        if len(set(self.ids)) != self.n:
            raise ValueError("node ids must be unique")
        self.regions = [n.region for n in ordered]
        self.kinds = [n.supported_kinds for n in ordered]
        self.maxc = [max(0, n.max_concurrency) for n in ordered]
        self.free = [max(0, n.max_concurrency - max(0, n.running)) for n in ordered]
        self.placed = [0] * self.n
        self.version = [0] * self.n
        self.trust = [_clamp01(n.trust) for n in ordered]
        self.trust_shown = [round(t, 6) for t in self.trust]
        self.load = [None if n.load is None else _clamp01(n.load) for n in ordered]
        self.state_reason = [_state_reason(n) for n in ordered]
        # the part of the score that does not change within a batch
        self.static = [weights.trust * t for t in self.trust]
        self.node_pools: list[list[_Pool]] = [[] for _ in range(self.n)]
        self.region_index: dict[str | None, list[int]] = {}
        for i, region in enumerate(self.regions):
            self.region_index.setdefault(region, []).append(i)

    def utilization(self, i: int) -> float:
        maxc = self.maxc[i]
        reported = self.load[i]
        if reported is None:
            return (maxc - self.free[i]) / maxc
        return min(1.0, reported + self.placed[i] / maxc)

    def base_score(self, i: int) -> float:
        w = self.weights
        score = (
            w.free_capacity * (self.free[i] / self.maxc[i])
            + w.load * (1.0 - self.utilization(i))
            + self.static[i]
        )
        # rounded so that scores equal on paper compare equal and fall to the id tie-break
        return round(score, 9)

    def entry(self, i: int) -> _Entry:
        return (-self.base_score(i), self.ids[i], i, self.version[i])


class _Pool:
    """The eligible nodes for one (kind, region) and the static part of its explanation."""

    __slots__ = (
        "cap",
        "excluded",
        "excluded_counts",
        "full_dynamic",
        "full_dynamic_count",
        "heap",
        "live",
        "region_match",
    )

    def __init__(self, fleet: _Fleet, kind: str, region: str | None, cap: int) -> None:
        self.cap = cap
        self.region_match = 1.0 if region is not None else 0.0
        self.heap: list[_Entry] = []
        self.excluded: list[dict[str, str]] = []
        self.excluded_counts: dict[str, int] = {}
        self.full_dynamic: list[int] = []
        self.full_dynamic_count = 0
        counts = self.excluded_counts
        interesting: list[tuple[str, str]] = []
        members = range(fleet.n) if region is None else fleet.region_index.get(region, [])
        for i in members:
            if kind not in fleet.kinds[i]:
                reason: str | None = "kind_unsupported"
            else:
                reason = fleet.state_reason[i]
                if reason is None and fleet.free[i] <= 0:
                    reason = "full"
            if reason is None:
                self.heap.append(fleet.entry(i))
                fleet.node_pools[i].append(self)
            else:
                counts[reason] = counts.get(reason, 0) + 1
                if len(interesting) < cap:
                    interesting.append((fleet.ids[i], reason))
        if region is not None:
            mismatched = fleet.n - len(members)
            if mismatched:
                counts["region_mismatch"] = mismatched
                room = cap - len(interesting)
                if room > 0:
                    for i in range(fleet.n):
                        if fleet.regions[i] != region:
                            interesting.append((fleet.ids[i], "region_mismatch"))
                            room -= 1
                            if room == 0:
                                break
        interesting.sort()
        self.excluded = [{"node_id": node_id, "reason": r} for node_id, r in interesting]
        heapq.heapify(self.heap)
        self.live = len(self.heap)


def _clamp01(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _state_reason(node: NodeView) -> str | None:
    if node.drained:
        return "drained"
    if node.quarantined:
        return "quarantined"
    if not node.healthy:
        return "unhealthy"
    if node.max_concurrency <= 0:
        return "full"
    return None


class Placer:
    """Places units one at a time on a fleet snapshot: the engine of ``place_batch``, for
    callers that choose the next unit as they go (``ordering.schedule_pass``).

    ``place`` books a slot and returns the ``Placement``, or None when no node is eligible.
    ``can_place`` tells, without booking, whether a unit of that kind and region has an
    eligible node left; ``free_slots`` is what is left on schedulable nodes overall.
    """

    __slots__ = (
        "_explain_excluded",
        "_fanout",
        "_fleet",
        "_n_pop",
        "_pools",
        "_streaks",
        "_weights_json",
        "free_slots",
    )

    def __init__(
        self,
        nodes: Sequence[NodeView],
        weights: PlacementWeights,
        fanout: int,
        streaks: Mapping[str, tuple[str, int]],
        *,
        explain_top: int = 10,
        explain_excluded: int = 10,
    ) -> None:
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        if explain_top < 0 or explain_excluded < 0:
            raise ValueError("explain_top and explain_excluded must not be negative")
        self._fleet = _Fleet(nodes, weights)
        self._pools: dict[tuple[str, str | None], _Pool] = {}
        self._streaks: Streaks = dict(streaks)
        self._fanout = fanout
        self._n_pop = max(explain_top, fanout + 1)
        self._explain_excluded = explain_excluded
        self._weights_json = weights.as_dict()
        fleet = self._fleet
        self.free_slots = sum(
            fleet.free[i] for i in range(fleet.n) if fleet.state_reason[i] is None
        )

    @property
    def streaks(self) -> Streaks:
        """The streaks as updated by the placements so far (a copy)."""
        return dict(self._streaks)

    def _pool(self, kind: str, region: str | None) -> _Pool:
        key = (kind, region)
        pool = self._pools.get(key)
        if pool is None:
            pool = _Pool(self._fleet, kind, region, self._explain_excluded)
            self._pools[key] = pool
        return pool

    def can_place(self, kind: str, region: str | None) -> bool:
        """Whether a node is still eligible for a unit of ``kind`` bound to ``region``."""
        return self.free_slots > 0 and self._pool(kind, region).live > 0

    def place(self, unit: UnitView) -> Placement | None:
        """Place ``unit`` on the best eligible node (see ``place_batch``), or return None."""
        fleet = self._fleet
        pool = self._pool(unit.kind, unit.region)
        heap = pool.heap
        if pool.live <= 0:
            return None
        free = fleet.free
        version = fleet.version
        heappop = heapq.heappop
        heappush = heapq.heappush

        # the best n_pop valid entries, best first; stale entries are re-scored on the way
        top: list[_Entry] = []
        n_pop = self._n_pop
        while heap and len(top) < n_pop:
            entry = heappop(heap)
            i = entry[2]
            if entry[3] != version[i]:
                if free[i] > 0:
                    heappush(heap, fleet.entry(i))
                continue
            top.append(entry)
        if not top:
            return None

        chosen_pos = 0
        streak_note: dict[str, Any] | None = None
        session = unit.execution_session_id
        last = self._streaks.get(session)
        if (
            last is not None
            and last[1] >= fleet.weights.streak_limit
            and top[0][1] == last[0]
            and len(top) > 1
        ):
            chosen_pos = 1
            streak_note = {"session": session, "node_id": last[0], "count": last[1]}
        chosen = top[chosen_pos]
        c = chosen[2]
        chosen_id = chosen[1]

        offered = [chosen_id]
        for pos, entry in enumerate(top):
            if len(offered) >= self._fanout:
                break
            if pos == chosen_pos or (streak_note is not None and pos == 0):
                continue
            offered.append(entry[1])

        decision = _decision(fleet, pool, top, chosen_id, streak_note, self._weights_json)

        # book the slot; the chosen node's entries elsewhere go stale and refresh lazily
        free[c] -= 1
        fleet.placed[c] += 1
        version[c] += 1
        self.free_slots -= 1
        if free[c] == 0:
            for member_pool in fleet.node_pools[c]:
                member_pool.live -= 1
                member_pool.full_dynamic_count += 1
                if len(member_pool.full_dynamic) < self._explain_excluded:
                    member_pool.full_dynamic.append(c)
        for pos, entry in enumerate(top):
            if pos != chosen_pos:
                heappush(heap, entry)
        if free[c] > 0:
            heappush(heap, fleet.entry(c))

        same_node = last is not None and last[0] == chosen_id
        self._streaks[session] = (chosen_id, last[1] + 1 if last is not None and same_node else 1)
        return Placement(unit.id, chosen_id, tuple(offered), decision)


def place_batch(
    units: Iterable[UnitView],
    nodes: Sequence[NodeView],
    weights: PlacementWeights,
    fanout: int,
    streaks: Mapping[str, tuple[str, int]],
    *,
    explain_top: int = 10,
    explain_excluded: int = 10,
) -> PlacementResult:
    """Place ``units`` (already in scheduling order) on ``nodes``, one after the other.

    Each unit goes to the highest-scoring node that passes the hard filter (ties: lowest node
    id), unless that node already took ``weights.streak_limit`` consecutive units of the same
    execution session and another eligible node exists. Free slots are decremented as units
    are placed, so ``running + placed <= max_concurrency`` holds on every node. Units with no
    eligible node are returned in ``unplaced``.

    ``fanout`` (>= 1) is how many nodes each unit is offered to (the chosen one first).
    ``streaks`` is not modified; the updated copy is in the result. ``explain_top`` caps the
    candidates listed in a decision (at least ``fanout + 1`` are listed), ``explain_excluded``
    the exclusions listed (all are counted in ``excluded_counts``).

    Units that cannot be placed here still take their turn in an order computed beforehand;
    ``ordering.schedule_pass`` orders and places together so that they do not.
    """
    placer = Placer(
        nodes,
        weights,
        fanout,
        streaks,
        explain_top=explain_top,
        explain_excluded=explain_excluded,
    )
    placements: list[Placement] = []
    unplaced: list[str] = []
    for unit in units:
        placement = placer.place(unit)
        if placement is None:
            unplaced.append(unit.id)
        else:
            placements.append(placement)
    return PlacementResult(tuple(placements), placer.streaks, tuple(unplaced))


def _decision(
    fleet: _Fleet,
    pool: _Pool,
    top: list[_Entry],
    chosen_id: str,
    streak_note: dict[str, Any] | None,
    weights_json: dict[str, float | int],
) -> dict[str, Any]:
    """The JSON explanation of one placement, computed before the slot is booked."""
    w = fleet.weights
    region_match = pool.region_match
    region_term = w.region_match * region_match
    candidates = []
    for entry in top:
        i = entry[2]
        maxc = fleet.maxc[i]
        candidates.append(
            {
                "node_id": entry[1],
                "score": round(-entry[0] + region_term, 6),
                "free_slots": fleet.free[i],
                "components": {
                    "free_capacity": round(fleet.free[i] / maxc, 6),
                    "load": round(1.0 - fleet.utilization(i), 6),
                    "trust": fleet.trust_shown[i],
                    "region_match": region_match,
                },
            }
        )
    excluded = [dict(e) for e in pool.excluded]
    counts = dict(pool.excluded_counts)
    if pool.full_dynamic_count:
        # nodes that filled up earlier in this batch
        counts["full"] = counts.get("full", 0) + pool.full_dynamic_count
        for i in pool.full_dynamic:
            if len(excluded) >= pool.cap:
                break
            excluded.append({"node_id": fleet.ids[i], "reason": "full"})
    if streak_note is not None:
        rule = (
            f"anti-affinity: {streak_note['node_id']} already took {streak_note['count']} "
            f"consecutive units of this session; next best chosen"
        )
    elif len(top) > 1 and top[0][0] == top[1][0]:
        rule = "highest score; tie broken by lowest node id"
    else:
        rule = "highest score"
    decision: dict[str, Any] = {
        "candidates": candidates,
        "eligible": pool.live,
        "excluded": excluded,
        "excluded_counts": counts,
        "excluded_total": sum(counts.values()),
        "chosen": chosen_id,
        "rule": rule,
        "weights": dict(weights_json),
    }
    if streak_note is not None:
        decision["streak"] = streak_note
    return decision
