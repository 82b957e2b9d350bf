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

Selecting from a large queue
----------------------------
``fair_order`` accepts any iterable and groups it itself, which is O(queue). To stay O(limit)
however large the backlog, feed ``fair_order_from_heads`` with the *heads* of the queue: for
each (priority, tenant) that has queued units at an admitted priority (see
``admission.max_schedulable_priority``), its first ``limit`` units by ``seq`` (fewer when the
tenant's cap leaves less room; a tenant can never receive more than ``limit`` in one pass).
No unit outside the heads can be selected, so the result is the same as ``fair_order`` on the
whole queue. In SQL, with an index on ``(status, priority, tenant_id, seq)``::

    SELECT u.* FROM (SELECT DISTINCT priority, tenant_id FROM work_units
                     WHERE status = 'queued' AND priority <= :max_priority) g
    CROSS JOIN LATERAL (
        SELECT * FROM work_units w
        WHERE w.status = 'queued' AND w.priority = g.priority AND w.tenant_id = g.tenant_id
        ORDER BY w.seq LIMIT :limit) u

(or ``row_number() OVER (PARTITION BY priority, tenant_id ORDER BY seq) <= :limit`` where
lateral joins are not available, as on SQLite), then ``group_heads(rows, limit)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from control_plane.scheduler.placement import UnitView

__all__ = ["Heads", "fair_order", "fair_order_from_heads", "group_heads"]

#: (priority, tenant_id) -> that tenant's queued units at that priority, sorted by seq
Heads = Mapping[tuple[int, str], Sequence[UnitView]]


def group_heads(units: Iterable[UnitView], per_group: int) -> dict[tuple[int, str], list[UnitView]]:
    """Group units by (priority, tenant), each group sorted by ``seq`` and cut to
    ``per_group`` units: the input ``fair_order_from_heads`` expects."""
    groups: dict[tuple[int, str], list[UnitView]] = {}
    for unit in units:
        key = (unit.priority, unit.tenant_id)
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
    """``fair_order`` over the heads of the queue: ``heads[(priority, tenant_id)]`` holds that
    group's first queued units, sorted by ``seq`` (at most ``limit`` are useful).

    O(groups + limit * log(tenants)).
    """
    if limit <= 0:
        return []
    in_flight: dict[str, int] = dict(running_by_tenant or {})
    caps: Mapping[str, int | None] = max_running_by_tenant or {}

    def capped(tenant: str) -> bool:
        cap = caps.get(tenant)
        return cap is not None and in_flight.get(tenant, 0) >= cap

    by_priority: dict[int, list[tuple[str, Sequence[UnitView]]]] = {}
    for (priority, tenant), group in heads.items():
        if group:
            by_priority.setdefault(priority, []).append((tenant, group))

    out: list[UnitView] = []
    for priority in sorted(by_priority):
        # (in flight, seq of the tenant's next unit, tenant, position in its group, group)
        heap: list[tuple[int, int, str, int, Sequence[UnitView]]] = [
            (in_flight.get(tenant, 0), group[0].seq, tenant, 0, group)
            for tenant, group in by_priority[priority]
            if not capped(tenant)
        ]
        heapq.heapify(heap)
        while heap:
            if len(out) >= limit:
                return out
            _, _, tenant, pos, group = heapq.heappop(heap)
            out.append(group[pos])
            in_flight[tenant] = in_flight.get(tenant, 0) + 1
            pos += 1
            if pos < len(group) and not capped(tenant):
                heapq.heappush(heap, (in_flight[tenant], group[pos].seq, tenant, pos, group))
    return out


def _seq(unit: UnitView) -> int:
    return unit.seq
