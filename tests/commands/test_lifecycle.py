"""Every edge of the work unit's state machine, driven through the commands on a real database
(each backend), with the counters recounted from the rows after each step:

* ``nodes.running`` is the node's scheduled plus claimed units;
* ``queue_depth.queued`` per (priority, tenant, kind, region) is the queued units;
* offers exist only for scheduled units, at their current attempt, to the nodes of
  ``offered_to``;
* ``claims`` has one row per claimed attempt (the current one of a claimed unit holds its
  token), one per ``workunit.claimed`` event.

Leases run out without sleeping: a lease of 0 s has expired for any later transaction (the
control plane's clock strictly increases).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from control_plane.billing.prices import ensure_billing
from control_plane.capacity.mode import ensure_state
from control_plane.db.engine import Database
from control_plane.db.tables import claims as claims_table
from control_plane.db.tables import events, nodes, offers, queue_depth, work_units
from control_plane.db.uow import write_transaction
from control_plane.errors import Conflict
from control_plane.fleet import nodes as fleet
from control_plane.scheduling.placement import PlacementWeights
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.tenants.commands import create_tenant
from control_plane.units import claims, reports
from control_plane.units.cancel import cancel
from control_plane.units.submit import submit
from control_plane.units.sweep import SweepReport, SweepTimings, sweep
from shared.enums import WorkUnitKind
from shared.wire import (
    ClaimReply,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    NodeRegister,
    WorkUnit,
    WorkUnitSubmit,
)

LEASE_S = 30.0
# heartbeats never go stale and offers never time out unless a test says so
CALM = SweepTimings(heartbeat_interval_s=3600, heartbeat_timeout_s=7200, offer_timeout_s=3600)


@dataclass
class World:
    db: Database
    ctx: SchedulerContext
    tenant_id: str

    def node(self, node_id: str, max_concurrency: int = 2) -> None:
        fleet.register(
            self.db,
            self.ctx,
            NodeRegister(
                node_id=node_id,
                supported_kinds=[WorkUnitKind.CPU],
                max_concurrency=max_concurrency,
            ),
        )

    def submit(self, max_attempts: int = 3) -> WorkUnit:
        item = WorkUnitSubmit(
            kind=WorkUnitKind.CPU,
            execution_session_id="s1",
            payload={"handler": "noop"},
            max_attempts=max_attempts,
        )
        [outcome] = submit(self.db, self.ctx, self.tenant_id, [(item, None)])
        assert outcome.status == 201 and outcome.unit is not None, outcome
        return outcome.unit

    def poll_claim(self, node_id: str, lease_s: float = LEASE_S) -> list[ClaimReply]:
        _, granted = claims.poll_once(self.db, self.ctx, node_id, 10, True, lease_s, True)
        return granted

    def sweep(self, timings: SweepTimings = CALM) -> SweepReport:
        return sweep(self.db, self.ctx, timings)

    def unit(self, unit_id: str) -> Any:
        with self.db.engine.connect() as conn:
            return conn.execute(select(work_units).where(work_units.c.id == unit_id)).one()

    def types(self, stream_id: str) -> list[str]:
        with self.db.engine.connect() as conn:
            return list(
                conn.execute(
                    select(events.c.type)
                    .where(events.c.stream_id == stream_id)
                    .order_by(events.c.seq)
                ).scalars()
            )

    def running(self) -> dict[str, int]:
        with self.db.engine.connect() as conn:
            return {r.node_id: r.running for r in conn.execute(select(nodes))}

    def check(self) -> None:
        """The counters agree with a recount from the rows."""
        with self.db.engine.connect() as conn:
            units = conn.execute(select(work_units)).all()
            node_rows = conn.execute(select(nodes.c.node_id, nodes.c.running)).all()
            depth = conn.execute(select(queue_depth)).all()
            offer_rows = conn.execute(select(offers)).all()
            claim_rows = conn.execute(select(claims_table)).all()
            claimed_events = conn.execute(
                select(events.c.stream_id, events.c.payload).where(
                    events.c.type == "workunit.claimed"
                )
            ).all()
        by_id = {u.id: u for u in units}

        holding = Counter(u.node_id for u in units if u.status in ("scheduled", "claimed"))
        assert {n.node_id: n.running for n in node_rows} == {
            n.node_id: holding.get(n.node_id, 0) for n in node_rows
        }, "nodes.running"
        assert set(holding) <= {n.node_id for n in node_rows}

        queued = Counter(
            (u.priority, u.tenant_id, u.kind, u.region or "") for u in units if u.status == "queued"
        )
        assert all(d.queued >= 0 for d in depth), "negative queue depth"
        assert {
            (d.priority, d.tenant_id, d.kind, d.region): d.queued for d in depth if d.queued
        } == (dict(queued)), "queue_depth"

        offered: dict[str, set[str]] = {}
        for o in offer_rows:
            unit = by_id[o.work_unit_id]
            assert unit.status == "scheduled", f"offer for a {unit.status} unit"
            assert o.attempt == unit.attempt, "offer for another attempt"
            offered.setdefault(o.work_unit_id, set()).add(o.node_id)
        for u in units:
            if u.status == "scheduled":
                assert offered.get(u.id) == set(orjson.loads(u.offered_to)), "offers"
                assert u.node_id in offered[u.id]

        pairs = [(c.work_unit_id, c.attempt) for c in claim_rows]
        assert len(pairs) == len(set(pairs))
        assert sorted(pairs) == sorted(
            (stream, orjson.loads(payload)["attempt"]) for stream, payload in claimed_events
        ), "one claims row per workunit.claimed"
        held = {(c.work_unit_id, c.attempt): c for c in claim_rows}
        for u in units:
            if u.status == "claimed":
                row = held[(u.id, u.attempt)]
                assert (row.node_id, row.claim_token) == (u.node_id, u.claim_token)
                assert u.lease_expires_us is not None
        for unit_id, attempt in pairs:
            assert attempt <= by_id[unit_id].attempt


@pytest.fixture
def world(db: Database) -> Iterator[World]:
    with write_transaction(db) as uow:
        ensure_state(uow)
        ensure_billing(uow, False, True, Decimal("0.000050"))
    tenant, _ = create_tenant(db, "acme")
    ctx = SchedulerContext(weights=PlacementWeights(), fanout=1)
    yield World(db, ctx, tenant.tenant_id)


def test_submit_schedule_claim_complete(world: World) -> None:
    unit = world.submit()  # no node yet: enqueue only
    assert world.unit(unit.id).status == "queued"
    world.check()

    world.node("n1")  # registration places what waits: schedule
    row = world.unit(unit.id)
    assert (row.status, row.node_id, row.attempt) == ("scheduled", "n1", 1)
    assert world.running() == {"n1": 1}
    world.check()

    [grant] = world.poll_claim("n1")  # claim
    row = world.unit(unit.id)
    assert (row.status, row.claim_token) == ("claimed", grant.claim_token)
    world.check()

    done = reports.complete(
        world.db, world.ctx, "n1", unit.id, CompleteRequest(claim_token=grant.claim_token)
    )
    assert done.status == "completed"
    assert world.running() == {"n1": 0}
    world.check()
    assert world.types(unit.id) == [
        "workunit.submitted",
        "workunit.scheduled",
        "workunit.claimed",
        "workunit.completed",
    ]


def test_an_offered_runner_up_claims_and_takes_the_slot(world: World) -> None:
    world.ctx.fanout = 2
    world.node("a", max_concurrency=1)
    world.node("b", max_concurrency=1)
    unit = world.submit()
    row = world.unit(unit.id)
    placed = row.node_id
    [runner_up] = [n for n in orjson.loads(row.offered_to) if n != placed]
    assert world.running() == {placed: 1, runner_up: 0}
    world.check()

    grant = claims.claim(world.db, runner_up, unit.id, 1, LEASE_S)
    assert world.running() == {placed: 0, runner_up: 1}
    world.check()

    # the placed node lost its offer with the claim
    assert world.poll_claim(placed) == []
    world.check()

    done, failed = reports.report(
        world.db,
        world.ctx,
        runner_up,
        [(unit.id, CompleteRequest(claim_token=grant.claim_token))],
        [],
    )
    assert failed == [] and done[0][0] is not None and done[0][0].status == "completed"
    assert world.running() == {placed: 0, runner_up: 0}
    world.check()


def test_unschedule_when_the_node_is_drained(world: World) -> None:
    world.node("n1")
    unit = world.submit()
    assert world.unit(unit.id).status == "scheduled"

    fleet.drain(world.db, "n1")
    report = world.sweep()
    assert (report.withdrawn, report.placed) == (1, 0)
    row = world.unit(unit.id)
    assert (row.status, row.node_id, row.attempt) == ("queued", None, 1)
    assert world.running() == {"n1": 0}
    assert world.types(unit.id)[-1] == "workunit.unscheduled"
    world.check()


def test_an_offer_that_timed_out_is_withdrawn_and_placed_again(world: World) -> None:
    world.node("n1")
    unit = world.submit()
    report = world.sweep(
        SweepTimings(heartbeat_interval_s=3600, heartbeat_timeout_s=7200, offer_timeout_s=0)
    )
    assert (report.withdrawn, report.placed) == (1, 1)
    row = world.unit(unit.id)
    assert (row.status, row.attempt) == ("scheduled", 1)
    assert world.types(unit.id)[-2:] == ["workunit.unscheduled", "workunit.scheduled"]
    world.check()


def test_fail_requeues_then_fails_for_good(world: World) -> None:
    world.node("n1")
    unit = world.submit(max_attempts=2)
    [grant] = world.poll_claim("n1")

    again = reports.fail(
        world.db, world.ctx, "n1", unit.id, FailRequest(claim_token=grant.claim_token, error="x")
    )
    # requeued at attempt 2, and placed again before the commit (the slot is free)
    assert (again.status, again.attempt) == ("queued", 2)
    row = world.unit(unit.id)
    assert (row.status, row.attempt, row.node_id) == ("scheduled", 2, "n1")
    world.check()

    [second] = world.poll_claim("n1")
    assert second.attempt == 2
    world.check()
    final = reports.fail(
        world.db, world.ctx, "n1", unit.id, FailRequest(claim_token=second.claim_token)
    )
    assert (final.status, final.attempt) == ("failed", 2)  # no attempt left
    assert world.running() == {"n1": 0}
    world.check()


def test_a_non_retryable_failure_is_terminal(world: World) -> None:
    world.node("n1")
    unit = world.submit(max_attempts=3)
    [grant] = world.poll_claim("n1")
    done = reports.fail(
        world.db,
        world.ctx,
        "n1",
        unit.id,
        FailRequest(claim_token=grant.claim_token, error="bad input", retryable=False),
    )
    assert (done.status, done.attempt, done.error) == ("failed", 1, "bad input")
    assert world.running() == {"n1": 0}
    world.check()


def test_lease_expiry_requeues_then_fails_and_fences_the_late_report(world: World) -> None:
    world.node("n1")
    unit = world.submit(max_attempts=2)
    [first] = world.poll_claim("n1", lease_s=0)
    world.check()

    report = world.sweep()
    assert (report.expired, report.placed) == (1, 1)
    row = world.unit(unit.id)
    assert (row.status, row.attempt) == ("scheduled", 2)
    world.check()

    with pytest.raises(Conflict) as stale:
        reports.complete(
            world.db, world.ctx, "n1", unit.id, CompleteRequest(claim_token=first.claim_token)
        )
    assert stale.value.code == "stale_claim"

    [second] = world.poll_claim("n1", lease_s=0)
    assert second.attempt == 2
    world.check()
    report = world.sweep()
    assert (report.expired, report.placed) == (1, 0)
    row = world.unit(unit.id)
    assert (row.status, row.attempt, row.lease_expires_us) == ("failed", 2, None)
    assert orjson.loads(row.error)["reason"] == "lease_expired"
    assert world.running() == {"n1": 0}
    world.check()
    assert world.types(unit.id).count("workunit.lease_expired") == 2


def test_cancel_from_queued_scheduled_and_claimed(world: World) -> None:
    queued = world.submit()
    world.check()
    assert cancel(world.db, world.ctx, queued.id, world.tenant_id, "test").status == "cancelled"
    world.check()

    world.node("n1", max_concurrency=2)
    scheduled = world.submit()
    assert world.unit(scheduled.id).status == "scheduled"
    assert cancel(world.db, world.ctx, scheduled.id, None, "admin").status == "cancelled"
    assert world.running() == {"n1": 0}
    world.check()

    claimed = world.submit()
    [grant] = world.poll_claim("n1")
    assert grant.work_unit.id == claimed.id
    assert cancel(world.db, world.ctx, claimed.id, world.tenant_id, "test").status == "cancelled"
    assert world.running() == {"n1": 0}
    world.check()
    # the node learns at its next heartbeat that the unit is no longer its own
    reply = fleet.heartbeat(world.db, "n1", HeartbeatRequest(running=[claimed.id]), LEASE_S)
    assert (reply.renewed, reply.revoked) == ([], [claimed.id])

    with pytest.raises(Conflict) as terminal:
        cancel(world.db, world.ctx, claimed.id, None, "admin")
    assert terminal.value.code == "already_terminal"
    world.check()
    for unit in (queued, scheduled, claimed):
        assert world.types(unit.id)[-1] == "workunit.cancelled"


def test_a_heartbeat_renews_the_leases_the_node_holds(world: World) -> None:
    world.node("n1")
    unit = world.submit()
    [grant] = world.poll_claim("n1", lease_s=0)  # already run out for the next transaction
    before = world.unit(unit.id).lease_expires_us

    reply = fleet.heartbeat(
        world.db, "n1", HeartbeatRequest(running=[unit.id, "wu_not_ours"]), LEASE_S
    )
    assert (reply.renewed, reply.revoked) == ([unit.id], ["wu_not_ours"])
    row = world.unit(unit.id)
    assert row.lease_expires_us > before
    assert (row.status, row.claim_token) == ("claimed", grant.claim_token)
    assert world.types("n1")[-1] == "workunit.leases.renewed"
    world.check()

    # without the renewal this sweep would expire the claim
    assert world.sweep().expired == 0
    assert world.unit(unit.id).status == "claimed"
    world.check()
