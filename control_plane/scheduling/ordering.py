"""Queue ordering: which queued units to schedule next, and in what order (pure).

The order is:

1. **Priority first**: every selected p0 unit comes before any p1 unit, and so on.
2. **Fair share across tenants within a priority**: the next unit goes to the tenant with the
   fewest units in flight (``running_by_tenant`` plus what this pass already selected); ties go
   to the tenant whose next unit is oldest (lowest ``seq``), then to the lowest tenant id.
   With nothing running this is plain round-robin, starting with the tenant that has waited
   longest, so a burst of 10,000 units from one tenant cannot starve another tenant's single
   unit: it is second at worst. Because in-flight counts carry over between passes, this holds
   even when every pass schedules one unit.
3. **FIFO within a tenant** (by ``seq``).
4. **Tenant caps**: once ``running + selected >= max_running`` for a tenant, its remaining
   units are skipped (for every priority).

Same inputs, same order: there is no randomness and every tie has a rule.

Ordering and placing together
-----------------------------
An order computed before placement lets units that no node can take (a kind with no capable
node up, a region with no capacity left) use up the pass: with ``limit`` = free slots, each
one leaves a slot empty, and a backlog of them at the head of the queue stalls scheduling.
``schedule_pass`` walks the same fair order but places as it goes: a unit with no eligible
node is skipped (it stays queued, and does not count as its tenant's turn), and the pass ends
when the fleet has no free slot left. That is what the scheduler sweep should call.

Selecting from a large queue
----------------------------
``fair_order`` accepts any iterable and groups it itself, which is O(queue). To stay
O(selected) however large the backlog, feed ``fair_order_from_heads`` / ``schedule_pass``
the *heads* of the queue: for each (priority, tenant) with queued units at an admitted
priority (see ``admission.max_schedulable_priority``), its first units by ``seq`` (``limit``
of them for ``fair_order_from_heads``; for ``schedule_pass``, the fleet's free slots). For
``schedule_pass`` group by (priority, tenant, kind, region) instead, so that a tenant's
unplaceable units cannot hide its placeable ones behind them; groups of one tenant and
priority are merged by ``seq``. Only the groups' contents matter (keys are for the caller).
In SQL, with an index on ``(status, priority, tenant_id, seq)`` (add ``kind, region`` to
the grouping and the index for the finer heads)::

    SELECT u.* FROM (SELECT DISTINCT priority, tenant_id FROM work_units
                     WHERE status = 'queued' AND priority <= :max_priority) g
    CROSS JOIN LATERAL (
        SELECT * FROM work_units w
        WHERE w.status = 'queued' AND w.priority = g.priority AND w.tenant_id = g.tenant_id
        ORDER BY w.seq LIMIT :limit) u

(or ``row_number() OVER (PARTITION BY priority, tenant_id ORDER BY seq) <= :limit`` where
lateral joins are not available, as on SQLite), then ``group_heads(rows, n)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from control_plane.scheduling.placement import (
    NodeView,
    Placement,
    PlacementResult,
    PlacementWeights,
    Placer,
    UnitView,
)

__all__ = ["Heads", "fair_order", "fair_order_from_heads", "group_heads", "schedule_pass"]

#: groups of queued units, each of one (priority, tenant) and sorted by seq; keys are free
Heads = Mapping[Any, Sequence[UnitView]]


def group_heads(
    units: Iterable[UnitView], per_group: int, *, by_constraint: bool = False
) -> dict[tuple[Any, ...], list[UnitView]]:
    """Group units by (priority, tenant) (with ``by_constraint``: by (priority, tenant, kind,
    region)), each group sorted by ``seq`` and cut to ``per_group`` units: the heads that
    ``fair_order_from_heads`` and ``schedule_pass`` expect."""
    groups: dict[tuple[Any, ...], list[UnitView]] = {}
    for unit in units:
        key: tuple[Any, ...] = (
            (unit.priority, unit.tenant_id, unit.kind, unit.region)
            if by_constraint
            else (unit.priority, unit.tenant_id)
        )
        group = groups.get(key)
        if group is None:
            groups[key] = [unit]
        else:
            group.append(unit)
    for key, group in groups.items():
        if any(group[k].seq > group[k + 1].seq for k in range(len(group) - 1)):
            group.sort(key=_seq)
        if len(group) > per_group:
            groups[key] = group[:per_group]
    return groups


def fair_order(
    units: Iterable[UnitView],
    limit: int,
    running_by_tenant: Mapping[str, int] | None = None,
    max_running_by_tenant: Mapping[str, int | None] | None = None,
) -> list[UnitView]:
    """Up to ``limit`` units of ``units`` in scheduling order (see the module docstring).

    ``running_by_tenant``: units each tenant has in flight (scheduled or claimed); missing
    means 0. ``max_running_by_tenant``: each tenant's cap; missing or None means no cap.
    O(len(units)); for a large queue use ``fair_order_from_heads``.
    """
    if limit <= 0:
        return []
    return fair_order_from_heads(
        group_heads(units, limit), limit, running_by_tenant, max_running_by_tenant
    )


def fair_order_from_heads(
    heads: Heads,
    limit: int,
    running_by_tenant: Mapping[str, int] | None = None,
    max_running_by_tenant: Mapping[str, int | None] | None = None,
) -> list[UnitView]:
    """``fair_order`` over the heads of the queue (see the module docstring): each group of
    ``heads`` holds the first queued units of one (priority, tenant), sorted by ``seq``.

    O(groups + heads + limit * log(tenants)).
    """
    out: list[UnitView] = []
    if limit <= 0:
        return out

    def take(unit: UnitView) -> bool:
        out.append(unit)
        return True

    _walk(heads, running_by_tenant, max_running_by_tenant, take, lambda: len(out) >= limit)
    return out


def schedule_pass(
    heads: Heads,
    nodes: Sequence[NodeView],
    weights: PlacementWeights,
    fanout: int,
    streaks: Mapping[str, tuple[str, int]],
    running_by_tenant: Mapping[str, int] | None = None,
    max_running_by_tenant: Mapping[str, int | None] | None = None,
    max_placements: int | None = None,
    *,
    explain_top: int = 10,
    explain_excluded: int = 10,
    last_served_by_tenant: Mapping[str, int] | None = None,
) -> PlacementResult:
    """One scheduling pass: walk the fair order of ``heads`` and place each unit as it comes
    (``placement.place_batch`` rules), until the fleet is full, ``max_placements`` is reached
    or the heads run out.

    A unit with no eligible node is skipped without using its tenant's turn and listed in
    ``unplaced`` (it stays queued); a placed unit counts as in flight for its tenant's fair
    share and cap. Units not reached are in neither list.
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
    skipped: list[str] = []

    def take(unit: UnitView) -> bool:
        placement = placer.place(unit) if placer.can_place(unit.kind, unit.region) else None
        if placement is None:
            skipped.append(unit.id)
            return False
        placements.append(placement)
        return True

    def done() -> bool:
        return placer.free_slots <= 0 or (
            max_placements is not None and len(placements) >= max_placements
        )

    _walk(heads, running_by_tenant, max_running_by_tenant, take, done, last_served_by_tenant)
    return PlacementResult(tuple(placements), placer.streaks, tuple(skipped))


def _walk(
    heads: Heads,
    running_by_tenant: Mapping[str, int] | None,
    max_running_by_tenant: Mapping[str, int | None] | None,
    take: Callable[[UnitView], bool],
    done: Callable[[], bool],
    last_served_by_tenant: Mapping[str, int] | None = None,
) -> None:
    """The fair order: offer units to ``take`` (True: it counts as in flight) until ``done``.

    Between tenants with as many units in flight, the one served longest ago goes first
    (``last_served_by_tenant``: a position that grows with every placement, such as the seq
    of the tenant's last ``workunit.scheduled``; missing = never). So even when every pass
    places one unit and nothing stays in flight, tenants take turns."""
    in_flight: dict[str, int] = dict(running_by_tenant or {})
    served: dict[str, int] = dict(last_served_by_tenant or {})
    turn = max(served.values(), default=0)
    caps: Mapping[str, int | None] = max_running_by_tenant or {}

    def capped(tenant: str) -> bool:
        cap = caps.get(tenant)
        return cap is not None and in_flight.get(tenant, 0) >= cap

    by_priority: dict[int, dict[str, list[Sequence[UnitView]]]] = {}
    for group in heads.values():
        if group:
            first = group[0]
            tenants = by_priority.setdefault(first.priority, {})
            tenants.setdefault(first.tenant_id, []).append(group)

    if done():
        return
    for priority in sorted(by_priority):
        # (in flight, seq of the tenant's next unit, tenant, that unit, the rest of its units);
        # a tenant's groups are merged lazily, so only what is taken is ever looked at
        heap: list[tuple[int, int, int, str, UnitView, Iterator[UnitView]]] = []
        for tenant, groups in by_priority[priority].items():
            if capped(tenant):
                continue
            rest = iter(groups[0]) if len(groups) == 1 else heapq.merge(*groups, key=_seq)
            first = next(rest)
            heap.append(
                (in_flight.get(tenant, 0), served.get(tenant, 0), first.seq, tenant, first, rest)
            )
        heapq.heapify(heap)
        while heap:
            _, _, _, tenant, unit, rest = heapq.heappop(heap)
            if take(unit):
                in_flight[tenant] = in_flight.get(tenant, 0) + 1
                turn += 1
                served[tenant] = turn
                if done():
                    return
            following = next(rest, None)
            if following is not None and not capped(tenant):
                entry = (
                    in_flight.get(tenant, 0),
                    served.get(tenant, 0),
                    following.seq,
                    tenant,
                    following,
                    rest,
                )
                heapq.heappush(heap, entry)


def _seq(unit: UnitView) -> int:
    return unit.seq
