"""Scheduling cost: queue ordering plus placement, per placement, as the fleet grows.

For each fleet size (10, 100, 1,000 nodes) over a backlog of 100,000 queued units (50 tenants
with a skewed share, p0-p3, cpu and llm_pod, some region-bound), it runs scheduling passes like
the control plane's sweep: pick as many units as there are free slots in fair order, place them,
drop the placed ones from the queue, let the fleet finish some work, repeat (at least 3
passes and 2,000 placements per fleet size). It prints, per
placement: ``place_batch``; ``fair_order_from_heads`` (the path the control plane takes, fed
the first ``limit`` units per (priority, tenant) as its query returns them); their sum; and
the one-off cost of ``fair_order`` over the whole 100,000-unit queue (the naive path), with
how each grows per 10x nodes. Pure Python, no database: the figures are the decision code.

    .venv/bin/python bench/scheduler.py [--units 100000] [--nodes 10,100,1000] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter

from control_plane.scheduling.ordering import (
    fair_order,
    fair_order_from_heads,
    group_heads,
    schedule_pass,
)
from control_plane.scheduling.placement import NodeView, PlacementWeights, UnitView, place_batch

REGIONS = (None, "eu", "us", "ap")


def make_queue(n: int, rnd: random.Random) -> list[UnitView]:
    tenants = [f"tenant-{i:02d}" for i in range(50)]
    tenant_weights = [40.0] + [60.0 / 49] * 49  # one tenant submits 40% of everything
    out = []
    for seq in range(n):
        tenant = rnd.choices(tenants, tenant_weights)[0]
        out.append(
            UnitView(
                id=f"wu-{seq:06d}",
                tenant_id=tenant,
                kind="cpu" if rnd.random() < 0.8 else "llm_pod",
                priority=rnd.choices((0, 1, 2, 3), (10, 40, 30, 20))[0],
                region=None if rnd.random() < 0.7 else rnd.choice(REGIONS[1:]),
                execution_session_id=f"{tenant}-s{rnd.randrange(200)}",
                seq=seq,
            )
        )
    return out


def make_fleet(n: int, rnd: random.Random) -> list[NodeView]:
    nodes = []
    for i in range(n):
        roll = rnd.random()
        kinds = ("cpu", "llm_pod") if roll < 0.8 else ("cpu",) if roll < 0.9 else ("llm_pod",)
        max_c = rnd.choice((4, 8, 16))
        nodes.append(
            NodeView(
                node_id=f"node-{i:04d}",
                region=rnd.choice(REGIONS),
                supported_kinds=frozenset(kinds),
                max_concurrency=max_c,
                running=rnd.randint(0, max_c // 2),
                healthy=rnd.random() > 0.03,
                quarantined=rnd.random() < 0.02,
                drained=rnd.random() < 0.01,
                trust=round(rnd.uniform(0.5, 1.0), 3),
            )
        )
    return nodes


def churn(nodes: list[NodeView], placed: Counter[str], rnd: random.Random) -> list[NodeView]:
    """The fleet runs what it was given and finishes some of it before the next pass."""
    out = []
    for n in nodes:
        running = n.running + placed[n.node_id]
        running -= rnd.randint(0, running)
        out.append(
            NodeView(
                n.node_id,
                n.region,
                n.supported_kinds,
                n.max_concurrency,
                running,
                n.healthy,
                n.quarantined,
                n.drained,
                n.trust,
            )
        )
    return out


def bench_fleet(
    n_nodes: int, queue: list[UnitView], min_passes: int, fanout: int, seed: int
) -> dict[str, float]:
    """Passes until at least ``min_passes`` and 2,000 placements (small fleets need more)."""
    rnd = random.Random(seed + n_nodes)
    nodes = make_fleet(n_nodes, rnd)
    weights = PlacementWeights()
    streaks: dict[str, tuple[str, int]] = {}
    running_by_tenant: Counter[str] = Counter()
    queue = list(queue)
    t_pass = t_split = t_heads = t_naive = 0.0
    placements = split_placements = passes = 0
    decision_bytes: list[int] = []
    while passes < min_passes or (placements < 2_000 and passes < 100):
        passes += 1
        schedulable = [n for n in nodes if n.healthy and not n.quarantined and not n.drained]
        free = sum(max(0, n.max_concurrency - n.running) for n in schedulable)

        # what the control plane's query returns: the first `free` units per group
        t0 = time.perf_counter()
        heads = group_heads(queue, free, by_constraint=True)
        t_heads += time.perf_counter() - t0

        t0 = time.perf_counter()
        result = schedule_pass(heads, nodes, weights, fanout, streaks, running_by_tenant)
        t_pass += time.perf_counter() - t0

        # for comparison: order `free` units first, then place them
        t0 = time.perf_counter()
        order = fair_order_from_heads(heads, free, running_by_tenant)
        split = place_batch(order, nodes, weights, fanout, streaks)
        t_split += time.perf_counter() - t0
        split_placements += len(split.placements)
        if passes == 1:
            t0 = time.perf_counter()
            naive = fair_order(queue, free, running_by_tenant)
            t_naive = time.perf_counter() - t0
            assert naive == order

        streaks = result.streaks
        placements += len(result.placements)
        decision_bytes.extend(len(json.dumps(pl.decision)) for pl in result.placements[:200])
        placed_ids = {pl.unit_id for pl in result.placements}
        by_id = {u.id: u for u in queue if u.id in placed_ids}
        for pl in result.placements:
            running_by_tenant[by_id[pl.unit_id].tenant_id] += 1
        queue = [u for u in queue if u.id not in placed_ids]
        nodes = churn(nodes, Counter(pl.node_id for pl in result.placements), rnd)
        # tenants' units finish too
        for tenant in list(running_by_tenant):
            running_by_tenant[tenant] -= rnd.randint(0, running_by_tenant[tenant])
    return {
        "placed": placements / passes,
        "pass_us": t_pass / max(1, placements) * 1e6,
        "split_placed": split_placements / passes,
        "split_us": t_split / max(1, split_placements) * 1e6,
        "heads_ms": t_heads / passes * 1e3,
        "naive_ms": t_naive * 1e3,
        "decision_bytes": statistics.fmean(decision_bytes) if decision_bytes else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--nodes", default="10,100,1000")
    parser.add_argument("--passes", type=int, default=3, help="at least this many passes")
    parser.add_argument("--fanout", default="1,3")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    queue = make_queue(args.units, random.Random(args.seed))
    print(f"queue: {len(queue):,} units, 50 tenants (one with 40%), p0-p3, cpu/llm_pod, 30% bound")
    print(
        f"{'nodes':>6} {'fanout':>6} {'placed/pass':>11} {'µs/placement':>12} {'growth':>7} "
        f"{'split: placed':>13} {'µs':>6} {'decision B':>10} {'heads ms':>9} {'naive ms':>9}"
    )
    for fanout in (int(f) for f in args.fanout.split(",")):
        previous: float | None = None
        for n in (int(x) for x in args.nodes.split(",")):
            r = bench_fleet(n, queue, args.passes, fanout, args.seed)
            growth = f"x{r['pass_us'] / previous:.2f}" if previous else "-"
            previous = r["pass_us"]
            print(
                f"{n:>6} {fanout:>6} {r['placed']:>11.0f} {r['pass_us']:>12.1f} {growth:>7} "
                f"{r['split_placed']:>13.0f} {r['split_us']:>6.1f} {r['decision_bytes']:>10.0f} "
                f"{r['heads_ms']:>9.1f} {r['naive_ms']:>9.1f}"
            )
    print(
        "µs/placement: schedule_pass (fair order + placement + explained decision) per unit\n"
        "placed; growth: per 10x nodes. split: fair_order_from_heads(limit = free slots) then\n"
        "place_batch, placed per pass and µs per placement (region- and kind-bound units use up\n"
        "its turns). heads ms: group_heads over the whole queue in Python, standing in for the\n"
        "database query; naive ms: fair_order over the whole queue, once."
    )
    print(f"ran in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
