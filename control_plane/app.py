"""``create_app(settings)``: routers, error handlers, the body limit, and a lifespan that
opens the database, migrates it, seeds billing, and runs the background loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from control_plane.api import errors
from control_plane.api.body_limit import BodyLimitMiddleware, RequireBearerMiddleware
from control_plane.api.deps import AuthCache
from control_plane.api.routes import billing, capacity, events, nodes, ops, tenants, workunits
from control_plane.billing.consumer import catch_up
from control_plane.billing.export import LedgerSink
from control_plane.billing.prices import ensure_billing
from control_plane.capacity.autoscaler import AutoscalerService, create_service
from control_plane.capacity.mode import ensure_state
from control_plane.clock import Clock
from control_plane.db.engine import Database, create_database
from control_plane.db.migrate import upgrade
from control_plane.db.uow import write_transaction
from control_plane.eventlog.wait import Notifier, PgListener
from control_plane.loops import Loop, run_loop
from control_plane.scheduling.placement import PlacementWeights
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.settings import LeaseSettings, SchedulerSettings, Settings
from control_plane.units.sweep import SweepTimings, sweep

log = logging.getLogger("krako.app")

DESCRIPTION = """Krako: a deterministic, event-sourced execution fabric for AI workloads.

Clients submit work units; node agents long-poll, claim, run and report; every state change
is an event in one append-only log, from which placement, billing and capacity decisions can
be replayed and audited. Errors are RFC 9457 problem details with a stable `code`."""


def scheduler_context(scheduler: SchedulerSettings) -> SchedulerContext:
    """The placement parameters of ``KRAKO_SCHEDULER_*`` (and the process's streak memory)."""
    return SchedulerContext(
        weights=PlacementWeights(
            free_capacity=scheduler.weight_free_capacity,
            load=scheduler.weight_load,
            trust=scheduler.weight_trust,
            region_match=scheduler.weight_region,
            streak_limit=scheduler.streak_limit,
        ),
        fanout=scheduler.offer_fanout,
    )


def sweep_timings(leases: LeaseSettings) -> SweepTimings:
    """The sweep's health and offer timings from the lease settings."""
    return SweepTimings(
        heartbeat_interval_s=leases.heartbeat_interval_s,
        heartbeat_timeout_s=leases.heartbeat_timeout_s,
        offer_timeout_s=max(leases.lease_s, 2 * leases.heartbeat_interval_s),
    )


def prepare_database(settings: Settings, clock: Clock | None = None) -> Database:
    """Open, migrate and seed the database (idempotent; safe on every replica)."""
    database, billing = settings.database, settings.billing
    if not database.is_postgres:
        database.data_dir.mkdir(parents=True, exist_ok=True)
    db = create_database(
        database.resolved_url,
        database.pool_size,
        clock=clock,
        snapshot_every=billing.wallet_snapshot_every,
    )
    upgrade(db)
    with write_transaction(db) as uow:
        ensure_state(uow)
        ensure_billing(
            uow,
            billing.bill_llm_from_workunit_completed,
            billing.bill_llm_from_invocation,
            billing.usd_per_cpu_s,
        )
    return db


def background_loops(app: FastAPI) -> list[Loop]:
    settings: Settings = app.state.settings
    db: Database = app.state.db
    ctx: SchedulerContext = app.state.scheduler_ctx
    timings = sweep_timings(settings.leases)
    sink: LedgerSink | None = app.state.ledger_sink
    autoscaler = app.state.autoscaler = create_service(settings, db)  # closed by the lifespan
    return [
        Loop("sweep", settings.leases.reaper_interval_s, lambda: sweep(db, ctx, timings)),
        Loop("billing", 0.5, lambda: catch_up(db)),
        *([Loop("ledger-sink", 0.5, lambda: sink.sync(db))] if sink is not None else []),
        Loop("autoscaler", settings.autoscaler.interval_s, autoscaler.tick),
    ]


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    """Build the app for ``settings`` (nothing is read from the environment here).

    ``clock``: the control plane's time (tests pass a ``ManualClock``); by default the
    system clock, and the database server's clock on PostgreSQL."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        notifier: Notifier = app.state.notifier
        notifier.bind(asyncio.get_running_loop())
        # Commands block a worker thread until their group commit lands: allow many at once.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 256
        db = await asyncio.to_thread(prepare_database, settings, clock)
        app.state.db = db
        db.publisher = notifier.publish
        listener: PgListener | None = None
        if db.is_postgres:
            conninfo = "postgresql://" + db.url.split("://", 1)[1]
            listener = PgListener(conninfo, notifier)
            listener.start()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(run_loop(loop, stop), name=f"krako-{loop.name}")
            for loop in background_loops(app)
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            autoscaler: AutoscalerService | None = getattr(app.state, "autoscaler", None)
            if autoscaler is not None:  # stops the agents it started, releases its lease
                await asyncio.to_thread(autoscaler.close)
            if listener is not None:
                listener.stop()
            db.publisher = None
            db.dispose()

    app = FastAPI(
        title="Krako control plane",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.notifier = Notifier()
    app.state.auth_cache = AuthCache()
    app.state.scheduler_ctx = scheduler_context(settings.scheduler)
    path = settings.billing.ledger_jsonl_path
    app.state.ledger_sink = LedgerSink(path) if path is not None else None
    errors.install(app)
    app.add_middleware(RequireBearerMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    for module in (tenants, workunits, nodes, events, billing, capacity, ops):
        app.include_router(module.router)
    return app
