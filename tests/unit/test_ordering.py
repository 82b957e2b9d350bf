"""Queue ordering: priority first, fair share across tenants, FIFO within a tenant, caps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.scheduling.ordering import (
    fair_order,
    fair_order_from_heads,
    group_heads,
    schedule_pass,
)
from control_plane.scheduling.placement import NodeView, PlacementWeights, UnitView, place_batch

TENANTS = ("t1", "t2", "t3", "t4")


def unit(
    seq: int, tenant: str = "t1", priority: int = 1, kind: str = "cpu", region: str | None = None
) -> UnitView:
    return UnitView(f"u{seq}", tenant, kind, priority, region, f"s-{tenant}", seq)


def node(node_id: str, max_concurrency: int = 4, running: int = 0, **kw: object) -> NodeView:
    fields: dict[str, object] = {
        "region": None,
        "supported_kinds": frozenset({"cpu", "llm_pod"}),
        "healthy": True,
        "quarantined": False,
        "drained": False,
        "trust": 0.8,
    }
    fields.update(kw)
    return NodeView(node_id=node_id, max_concurrency=max_concurrency, running=running, **fields)  # type: ignore[arg-type]


@st.composite
def queues(draw: st.DrawFn) -> list[UnitView]:
    n = draw(st.integers(0, 60))
    seqs = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    return [
        unit(
            seq,
            tenant=draw(st.sampled_from(TENANTS)),
            priority=draw(st.sampled_from([0, 1, 1, 2, 9])),
        )
        for seq in seqs
    ]


running_st = st.dictionaries(st.sampled_from(TENANTS), st.integers(0, 5))
caps_st = st.dictionaries(st.sampled_from(TENANTS), st.none() | st.integers(0, 8))


def _capped(t: str, in_flight: Mapping[str, int], caps: Mapping[str, int | None]) -> bool:
    cap = caps.get(t)
    return cap is not None and in_flight.get(t, 0) >= cap


@settings(max_examples=300, deadline=None)
@given(queues(), st.integers(0, 70), running_st, caps_st, st.randoms())
def test_order_rules(queue, limit, running, caps, rnd):
    out = fair_order(queue, limit, running, caps)
    # deterministic, whatever the input order
    shuffled = list(queue)
    rnd.shuffle(shuffled)
    assert fair_order(shuffled, limit, running, caps) == out
    # the heads path gives the same answer, with either grouping
    assert fair_order_from_heads(group_heads(queue, limit), limit, running, caps) == out
    fine = group_heads(queue, limit, by_constraint=True)
    assert fair_order_from_heads(fine, limit, running, caps) == out

    assert len(out) <= limit
    assert len({u.id for u in out}) == len(out)
    # priority first
    assert [u.priority for u in out] == sorted(u.priority for u in out)
    # FIFO within a tenant and priority: the selected units are its oldest ones
    for t in TENANTS:
        for p in {u.priority for u in queue}:
            chosen = [u.seq for u in out if u.tenant_id == t and u.priority == p]
            oldest = sorted(u.seq for u in queue if u.tenant_id == t and u.priority == p)
            assert chosen == oldest[: len(chosen)]
    # caps
    selected = Counter(u.tenant_id for u in out)
    for t, cap in caps.items():
        if cap is not None:
            assert selected[t] == 0 or running.get(t, 0) + selected[t] <= cap

    # fair share: each pick went to a tenant with the fewest in flight among those that still
    # had units at that priority and room under their cap
    in_flight: Counter[str] = Counter(running)
    taken: set[str] = set()
    for u in out:
        rivals = [
            v.tenant_id
            for v in queue
            if v.priority == u.priority
            and v.id not in taken
            and not _capped(v.tenant_id, in_flight, caps)
        ]
        assert in_flight[u.tenant_id] == min(in_flight[t] for t in rivals)
        in_flight[u.tenant_id] += 1
        taken.add(u.id)

    # nothing left out that could have been taken
    if len(out) < limit:
        left = [v for v in queue if v.id not in taken]
        assert all(_capped(v.tenant_id, in_flight, caps) for v in left)


def test_burst_does_not_starve_a_single_unit():
    burst = [unit(i, "big") for i in range(10_000)]
    out = fair_order([*burst, unit(10_000, "small")], limit=5)
    assert [u.tenant_id for u in out] == ["big", "small", "big", "big", "big"]


def test_round_robin_starts_with_the_longest_waiting_tenant():
    queue = [unit(5, "a"), unit(6, "a"), unit(1, "b"), unit(2, "b"), unit(3, "c")]
    assert [u.seq for u in fair_order(queue, 10)] == [1, 3, 5, 2, 6]


def test_in_flight_tenants_wait_for_the_others():
    queue = [unit(i, "a") for i in range(5)] + [unit(100 + i, "b") for i in range(5)]
    out = fair_order(queue, 6, running_by_tenant={"a": 3})
    assert [u.tenant_id for u in out] == ["b", "b", "b", "a", "b", "a"]


def test_priority_beats_fairness_and_age():
    queue = [unit(i, "a", priority=2) for i in range(3)] + [unit(50, "b", priority=0)]
    assert [u.seq for u in fair_order(queue, 2)] == [50, 0]


def test_tenant_cap_skips_its_units_across_priorities():
    queue = [unit(i, "a", priority=i % 2) for i in range(10)] + [unit(20, "b", priority=1)]
    out = fair_order(queue, 10, running_by_tenant={"a": 1}, max_running_by_tenant={"a": 3})
    assert Counter(u.tenant_id for u in out) == {"a": 2, "b": 1}
    assert fair_order(queue, 10, {"a": 3}, {"a": 3, "b": None}) == [queue[-1]]


def test_limit_zero_and_empty():
    assert fair_order([unit(1)], 0) == []
    assert fair_order([], 10) == []
    assert fair_order_from_heads({}, 10) == []


def test_group_heads_sorts_and_cuts():
    heads = group_heads([unit(3), unit(1), unit(2), unit(9, "b", 0)], 2)
    assert {k: [u.seq for u in v] for k, v in heads.items()} == {(1, "t1"): [1, 2], (0, "b"): [9]}


# --------------------------------------------------------------------------- schedule_pass


@st.composite
def mixed_queues(draw: st.DrawFn) -> list[UnitView]:
    n = draw(st.integers(0, 60))
    return [
        unit(
            seq,
            tenant=draw(st.sampled_from(TENANTS)),
            priority=draw(st.sampled_from([0, 1, 1, 2])),
            kind=draw(st.sampled_from(["cpu", "cpu", "llm_pod"])),
            region=draw(st.sampled_from([None, None, "eu", "ap"])),
        )
        for seq in range(n)
    ]


@st.composite
def small_fleets(draw: st.DrawFn) -> list[NodeView]:
    n = draw(st.integers(0, 5))
    return [
        node(
            f"n{i}",
            max_concurrency=draw(st.integers(0, 6)),
            running=draw(st.integers(0, 3)),
            region=draw(st.sampled_from([None, "eu", "us"])),
            supported_kinds=draw(
                st.sampled_from([frozenset({"cpu", "llm_pod"}), frozenset({"cpu"})])
            ),
            healthy=draw(st.sampled_from([True, True, True, False])),
        )
        for i in range(n)
    ]


def _eligible(u: UnitView, n: NodeView) -> bool:
    return (
        u.kind in n.supported_kinds
        and n.healthy
        and not n.quarantined
        and not n.drained
        and (u.region is None or n.region == u.region)
    )


@settings(max_examples=300, deadline=None)
@given(mixed_queues(), small_fleets(), running_st, caps_st, st.none() | st.integers(0, 10))
def test_schedule_pass_is_work_conserving_and_safe(queue, nodes, running, caps, max_placements):
    heads = group_heads(queue, 100, by_constraint=True)
    result = schedule_pass(
        heads, nodes, PlacementWeights(), 2, {}, running, caps, max_placements=max_placements
    )
    by_id = {u.id: u for u in queue}
    nodes_by_id = {n.node_id: n for n in nodes}
    used = Counter(p.node_id for p in result.placements)
    for node_id, count in used.items():
        n = nodes_by_id[node_id]
        assert n.running + count <= n.max_concurrency
    for p in result.placements:
        assert _eligible(by_id[p.unit_id], nodes_by_id[p.node_id])
    placed = {p.unit_id for p in result.placements}
    assert not placed & set(result.unplaced)
    if max_placements is not None:
        assert len(placed) <= max_placements
        if len(placed) == max_placements:
            return
    # caps hold
    in_flight = Counter(running)
    for p in result.placements:
        in_flight[by_id[p.unit_id].tenant_id] += 1
    for t, cap in caps.items():
        if cap is not None:
            placed_t = sum(1 for p in result.placements if by_id[p.unit_id].tenant_id == t)
            assert placed_t == 0 or in_flight[t] <= cap
    # nothing left behind that a node could still have taken
    left = {n.node_id: n.max_concurrency - n.running - used[n.node_id] for n in nodes}
    for u in queue:
        if u.id in placed or _capped(u.tenant_id, in_flight, caps):
            continue
        assert not any(left[n.node_id] > 0 and _eligible(u, n) for n in nodes)


@settings(max_examples=200, deadline=None)
@given(queues(), st.integers(1, 6), running_st)
def test_schedule_pass_matches_order_then_place_when_everything_fits(queue, n_nodes, running):
    nodes = [node(f"n{i}", max_concurrency=3) for i in range(n_nodes)]
    heads = group_heads(queue, 100)
    result = schedule_pass(heads, nodes, PlacementWeights(), 1, {}, running)
    order = fair_order(queue, 3 * n_nodes, running)
    assert result == place_batch(order, nodes, PlacementWeights(), 1, {})


def test_unplaceable_units_do_not_stall_the_pass():
    # 1,000 units bound to a region with no node sit at the head of the queue
    stuck = [unit(i, "a", region="ap") for i in range(1000)]
    fine = [unit(1000 + i, "a") for i in range(10)] + [unit(2000 + i, "b") for i in range(10)]
    nodes = [node("n1", max_concurrency=8), node("n2", max_concurrency=4)]
    heads = group_heads([*stuck, *fine], 12, by_constraint=True)
    result = schedule_pass(heads, nodes, PlacementWeights(), 1, {})
    assert len(result.placements) == 12
    of_b = [p for p in result.placements if int(p.unit_id[1:]) >= 2000]
    assert len(of_b) == 6  # fair share: 6 for b, 6 for a
    assert set(result.unplaced) <= {u.id for u in stuck}
    # order-then-place with limit = free slots wastes a's half of the fleet
    order = fair_order([*stuck, *fine], 12)
    assert len(place_batch(order, nodes, PlacementWeights(), 1, {}).placements) == 6
