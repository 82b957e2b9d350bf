"""``create_app(settings)``: the services, routers, error handlers, the body limit, and a
lifespan that opens the database, migrates it, seeds billing, and runs the background loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from control_plane.api import docs, errors
from control_plane.api.body_limit import BodyLimitMiddleware, RequireBearerMiddleware
from control_plane.api.routes import billing, capacity, events, nodes, ops, tenants, workunits
from control_plane.billing.consumer import catch_up
from control_plane.clock import Clock
from control_plane.eventlog.wait import PgListener
from control_plane.loops import Loop, run_loop
from control_plane.services import Services, build_services, prepare_database
from control_plane.settings import Settings
from control_plane.units.sweep import sweep

log = logging.getLogger("krako.app")

DESCRIPTION = """Krako: a deterministic, event-sourced execution fabric for AI workloads.

Clients submit work units; node agents long-poll, claim, run and report; every state change
is an event in one append-only log, from which placement, billing and capacity decisions can
be replayed and audited. Errors are RFC 9457 problem details with a stable `code`."""


def background_loops(services: Services) -> list[Loop]:
    """The loops of one process: sweep, billing consumer, JSONL sink, autoscaler."""
    db, settings, sink = services.db, services.settings, services.ledger_sink
    ctx, timings = services.scheduler, services.sweep
    return [
        Loop("sweep", settings.leases.reaper_interval_s, lambda: sweep(db, ctx, timings)),
        Loop("billing", 0.5, lambda: catch_up(db), trigger=services.billing_due),
        *([Loop("ledger-sink", 0.5, lambda: sink.sync(db))] if sink is not None else []),
        Loop("autoscaler", settings.autoscaler.interval_s, services.autoscaler.tick),
    ]


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    """Build the app for ``settings`` (nothing is read from the environment here).

    ``clock``: the control plane's time (tests pass a ``ManualClock``); by default the
    system clock, and the database server's clock on PostgreSQL."""
    services = build_services(settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db, notifier = services.db, services.notifier
        notifier.bind(asyncio.get_running_loop())
        # Commands block a worker thread until their group commit lands: allow many at once.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 256
        await asyncio.to_thread(prepare_database, services)
        db.publisher = notifier.publish
        listener: PgListener | None = None
        if db.is_postgres:
            conninfo = "postgresql://" + db.url.split("://", 1)[1]
            listener = PgListener(conninfo, notifier)
            listener.start()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(run_loop(loop, stop), name=f"krako-{loop.name}")
            for loop in background_loops(services)
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            # stops the agents it started, releases its lease
            await asyncio.to_thread(services.autoscaler.close)
            if listener is not None:
                listener.stop()
            db.publisher = None
            db.dispose()

    app = FastAPI(
        title="Krako control plane",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: control_plane/api/docs.py, with local assets
        redoc_url=None,
    )
    app.state.services = services
    errors.install(app)
    app.add_middleware(RequireBearerMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    for module in (tenants, workunits, nodes, events, billing, capacity, ops):
        app.include_router(module.router)
    docs.install(app)
    return app
