"""A manual override pins the admission mode even when it is the mode already in force: with a
``ManualClock`` the real autoscaler tick runs on a real database (both backends) under
pressure that would throttle, and the pinned OPEN holds until its TTL runs out; then the
autoscaler decides at its next tick. Time moves only when the test advances the clock."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select

from control_plane.capacity.autoscaler import params_from_settings, run_tick
from control_plane.capacity.controller import ControllerParams
from control_plane.capacity.mode import current_mode, set_override
from control_plane.clock import ManualClock
from control_plane.db.engine import Database
from control_plane.db.tables import events
from control_plane.db.uow import read_connection
from control_plane.fleet import nodes as fleet
from control_plane.scheduling.placement import PlacementWeights
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.tenants.commands import create_tenant
from control_plane.units.submit import submit
from shared.enums import CapacityMode, WorkUnitKind
from shared.wire import NodeRegister, WorkUnitSubmit
from tests.api.conftest import make_settings

TICK_S = 1.0
HOLDER = "replica-a"
MODE_CHANGED = "capacity.admission.mode.changed"
OVERRIDE_SET = "capacity.override.set"
OVERRIDE_CLEARED = "capacity.override.cleared"


@pytest.fixture
def params(db_url: str) -> ControllerParams:
    return params_from_settings(
        make_settings(db_url, autoscaler={"min_hold_s": 0.0, "scale_up_cooldown_s": 0.0}).autoscaler
    )


def pressure(db: Database) -> None:
    """One single-slot node and a backlog far past the THROTTLED threshold."""
    ctx = SchedulerContext(weights=PlacementWeights(), fanout=1)
    tenant, _ = create_tenant(db, "acme")
    fleet.register(
        db, ctx, NodeRegister(node_id="n1", supported_kinds=[WorkUnitKind.CPU], max_concurrency=1)
    )
    item = WorkUnitSubmit(
        kind=WorkUnitKind.CPU, execution_session_id="s1", payload={"handler": "noop"}
    )
    submit(db, ctx, tenant.tenant_id, [(item, None)] * 6)


def tick(db: Database, params: ControllerParams, clock: ManualClock) -> CapacityMode:
    clock.advance(TICK_S)
    assert run_tick(db, params, HOLDER, lease_ttl_s=3600).leader
    with read_connection(db) as conn:
        return current_mode(conn)


def capacity_log(db: Database) -> list[tuple[str, dict[str, object]]]:
    with read_connection(db) as conn:
        rows = conn.execute(
            select(events.c.type, events.c.payload)
            .where(events.c.stream_id == "capacity")
            .order_by(events.c.seq)
        ).all()
    return [(r.type, orjson.loads(r.payload)) for r in rows]


def test_the_pressure_alone_throttles(
    timed_db: Database, clock: ManualClock, params: ControllerParams
) -> None:
    pressure(timed_db)
    modes = [tick(timed_db, params, clock) for _ in range(3)]
    assert CapacityMode.THROTTLED in modes or CapacityMode.CRITICAL in modes, modes


def test_pinning_the_mode_in_force_holds_it_against_the_autoscaler(
    timed_db: Database, clock: ManualClock, params: ControllerParams
) -> None:
    report = set_override(timed_db, CapacityMode.OPEN, "launch day", ttl_s=30.0)
    assert report.mode is CapacityMode.OPEN
    assert capacity_log(timed_db) == [
        (OVERRIDE_SET, {"mode": "OPEN", "reason": "launch day", "ttl_s": 30.0})
    ]  # the override is an event of its own; the mode did not change, so no mode event

    pressure(timed_db)
    for _ in range(29):  # 29 s of ticks under pressure: still inside the 30 s ttl
        assert tick(timed_db, params, clock) is CapacityMode.OPEN
    assert [t for t, _ in capacity_log(timed_db) if t != "capacity.scale.requested"] == [
        OVERRIDE_SET
    ]

    # past the ttl the override ends and the autoscaler decides at that very tick
    assert tick(timed_db, params, clock) is not CapacityMode.OPEN
    log = [(t, p) for t, p in capacity_log(timed_db) if t != "capacity.scale.requested"]
    assert [t for t, _ in log] == [OVERRIDE_SET, OVERRIDE_CLEARED, MODE_CHANGED]
    assert log[1][1] == {"reason": "override ttl expired"}
    assert log[2][1]["source"] == "autoscaler" and log[2][1]["from"] == "OPEN"
