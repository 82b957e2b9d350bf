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
from control_plane.billing import snapshots
from control_plane.billing.consumer import catch_up
from control_plane.billing.export import LedgerSink
from control_plane.billing.prices import ensure_billing
from control_plane.capacity.autoscaler import AutoscalerService, create_service
from control_plane.capacity.mode import ensure_state
from control_plane.db.engine import Database, create_database
from control_plane.db.migrate import upgrade
from control_plane.db.uow import set_publisher, write_transaction
from control_plane.eventlog.wait import Notifier, PgListener
from control_plane.loops import Loop, run_loop
from control_plane.scheduling.placement import PlacementWeights
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.settings import Settings
from control_plane.units.sweep import SweepTimings, sweep

log = logging.getLogger("krako.app")

DESCRIPTION = """Krako: a deterministic, event-sourced execution fabric for AI workloads.

Clients submit work units; node agents long-poll, claim, run and report; every state change
is an event in one append-only log, from which placement, billing and capacity decisions can
be replayed and audited. Errors are RFC 9457 problem details with a stable `code`."""


def scheduler_context(settings: Settings) -> SchedulerContext:
    return SchedulerContext(
        weights=PlacementWeights(
            free_capacity=settings.scheduler_weight_free_capacity,
            load=settings.scheduler_weight_load,
            trust=settings.scheduler_weight_trust,
            region_match=settings.scheduler_weight_region,
            streak_limit=settings.scheduler_streak_limit,
        ),
        fanout=settings.scheduler_offer_fanout,
    )


def prepare_database(settings: Settings) -> Database:
    """Open, migrate and seed the database (idempotent; safe on every replica)."""
    if not settings.is_postgres:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = create_database(settings.resolved_database_url, settings.db_pool_size)
    upgrade(db)
    with write_transaction(db) as uow:
        ensure_state(uow)
        ensure_billing(
            uow,
            settings.bill_llm_from_workunit_completed,
            settings.bill_llm_from_invocation,
            settings.usd_per_cpu_s,
        )
    return db


def background_loops(app: FastAPI) -> list[Loop]:
    settings: Settings = app.state.settings
    db: Database = app.state.db
    ctx: SchedulerContext = app.state.scheduler_ctx
    timings = SweepTimings(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        offer_timeout_s=max(settings.lease_s, 2 * settings.heartbeat_interval_s),
    )
    sink: LedgerSink | None = app.state.ledger_sink
    autoscaler = app.state.autoscaler = create_service(settings, db)  # closed by the lifespan
    return [
        Loop("sweep", settings.lease_reaper_interval_s, lambda: sweep(db, ctx, timings)),
        Loop("billing", 0.5, lambda: catch_up(db)),
        *([Loop("ledger-sink", 0.5, lambda: sink.sync(db))] if sink is not None else []),
        Loop("autoscaler", settings.autoscaler_interval_s, autoscaler.tick),
    ]


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings`` (nothing is read from the environment here)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        notifier: Notifier = app.state.notifier
        notifier.bind(asyncio.get_running_loop())
        # Commands block a worker thread until their group commit lands: allow many at once.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 256
        db = await asyncio.to_thread(prepare_database, settings)
        app.state.db = db
        snapshots.configure(db, settings.wallet_snapshot_every)
        set_publisher(db, notifier.publish)
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
            set_publisher(db, None)
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
    app.state.scheduler_ctx = scheduler_context(settings)
    path = settings.ledger_jsonl_path
    app.state.ledger_sink = LedgerSink(path) if path is not None else None
    errors.install(app)
    app.add_middleware(RequireBearerMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    for module in (tenants, workunits, nodes, events, billing, capacity, ops):
        app.include_router(module.router)
    return app
