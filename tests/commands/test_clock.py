"""The control plane's time is the ``Database``'s clock object, so a test can move it: with a
``ManualClock`` a lease runs out when the clock is advanced past it, not when a test sleeps,
on both backends (on PostgreSQL an explicit clock replaces the server's ``clock_timestamp()``;
without one the server's clock stands, so replicas agree)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from control_plane.app import create_app
from control_plane.clock import ManualClock, SystemClock
from control_plane.db.engine import Database, create_database
from control_plane.db.tables import events, work_units
from control_plane.db.uow import db_now_us, write_transaction
from control_plane.fleet import nodes as fleet
from control_plane.scheduling.placement import PlacementWeights
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.tenants.commands import create_tenant
from control_plane.units import claims
from control_plane.units.submit import submit
from control_plane.units.sweep import SweepTimings, sweep
from shared.enums import WorkUnitKind
from shared.wire import NodeRegister, WorkUnitSubmit
from tests.api.conftest import ADMIN, auth, make_settings

LEASE_S = 30.0
CALM = SweepTimings(heartbeat_interval_s=3600, heartbeat_timeout_s=7200, offer_timeout_s=3600)


def test_the_unit_of_work_reads_the_database_clock(timed_db: Database, clock: ManualClock) -> None:
    clock.set(1_900_000_000_000_000)
    with write_transaction(timed_db) as uow:
        assert 1_900_000_000_000_000 < uow.now_us < 1_900_000_000_001_000
        first = uow.now_us
    tenant, _ = create_tenant(timed_db, "acme")
    with timed_db.engine.connect() as conn:
        recorded = conn.execute(
            select(events.c.recorded_at_us).where(events.c.stream_id == tenant.tenant_id)
        ).scalar_one()
    assert first < recorded < first + 1_000  # the event carries the clock's time
    assert db_now_us(timed_db) > recorded  # and reads outside a transaction agree


def test_a_lease_runs_out_when_the_clock_moves(timed_db: Database, clock: ManualClock) -> None:
    ctx = SchedulerContext(weights=PlacementWeights(), fanout=1)
    tenant, _ = create_tenant(timed_db, "acme")
    fleet.register(
        timed_db,
        ctx,
        NodeRegister(node_id="n1", supported_kinds=[WorkUnitKind.CPU], max_concurrency=1),
    )
    item = WorkUnitSubmit(
        kind=WorkUnitKind.CPU, execution_session_id="s1", payload={"handler": "noop"}
    )
    [outcome] = submit(timed_db, ctx, tenant.tenant_id, [(item, None)])
    assert outcome.unit is not None
    _, [grant] = claims.poll_once(timed_db, ctx, "n1", 1, True, LEASE_S, True)
    assert grant.work_unit.id == outcome.unit.id

    clock.advance(LEASE_S - 1)
    assert sweep(timed_db, ctx, CALM).expired == 0
    clock.advance(2)
    assert sweep(timed_db, ctx, CALM).expired == 1
    with timed_db.engine.connect() as conn:
        row = conn.execute(select(work_units).where(work_units.c.id == outcome.unit.id)).one()
    assert row.attempt == 2 and row.status in ("queued", "scheduled")


def test_each_database_has_its_own_clock(db_url: str) -> None:
    a, b = create_database(db_url, pool_size=1), create_database(db_url, pool_size=1)
    try:
        assert isinstance(a.clock, SystemClock) and a.clock is not b.clock
        # on PostgreSQL, without an explicit clock, the server's clock is the time
        assert a.database_clock == a.is_postgres
        assert not create_database(db_url, clock=ManualClock()).database_clock
    finally:
        a.dispose()
        b.dispose()


def test_create_app_takes_the_clock(db_url: str) -> None:
    clock = ManualClock(start_us=2_000_000_000_000_000)  # 2033-05-18T03:33:20Z
    with TestClient(create_app(make_settings(db_url), clock=clock)) as client:
        r = client.post("/v1/tenants", json={"name": "acme"}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        tenant_id = r.json()["tenant_id"]
        clock.advance(3600)
        r = client.get("/v1/events", params={"limit": 1000}, headers=auth(ADMIN))
        created = [e for e in r.json()["events"] if e["stream_id"] == tenant_id]
    assert [e["recorded_at"][:16] for e in created] == ["2033-05-18T03:33"]
