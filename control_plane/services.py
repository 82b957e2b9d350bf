"""The services of one control-plane app: everything it owns, built once by ``create_app``
and handed to the routes (``api.deps``) and the background loops, never looked up globally.

Building them connects to nothing: the database is opened, migrated and seeded by the app's
lifespan (``prepare_database``), which also binds the notifier to the running event loop,
points the database's wake-ups at it, and closes the autoscaler at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.billing.export import LedgerSink
from control_plane.billing.prices import ensure_billing
from control_plane.capacity.autoscaler import AutoscalerService, create_service
from control_plane.capacity.mode import ensure_state
from control_plane.clock import Clock
from control_plane.db.engine import Database, create_database
from control_plane.db.migrate import upgrade
from control_plane.db.uow import write_transaction
from control_plane.eventlog.wait import Notifier
from control_plane.loops import Trigger
from control_plane.scheduling.placement import PlacementWeights
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.settings import LeaseSettings, SchedulerSettings, Settings
from control_plane.tenants.auth import AuthCache
from control_plane.units.sweep import SweepTimings


@dataclass(frozen=True, eq=False)
class Services:
    """What one app owns. ``clock`` is the database's (the time of every command)."""

    settings: Settings
    db: Database
    clock: Clock
    notifier: Notifier
    auth_cache: AuthCache
    scheduler: SchedulerContext
    sweep: SweepTimings
    ledger_sink: LedgerSink | None
    autoscaler: AutoscalerService
    billing_due: Trigger
    """Asks the billing loop to fold now (a billing read waits for it instead of writing)."""


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


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    """The services ``settings`` describe (``ValueError`` on a bad autoscaler setup).
    ``clock``: the control plane's time; by default the system clock, and the database
    server's on PostgreSQL."""
    database = settings.database
    db = create_database(
        database.resolved_url,
        database.pool_size,
        clock=clock,
        snapshot_every=settings.billing.wallet_snapshot_every,
    )
    path = settings.billing.ledger_jsonl_path
    return Services(
        settings=settings,
        db=db,
        clock=db.clock,
        notifier=Notifier(),
        auth_cache=AuthCache(),
        scheduler=scheduler_context(settings.scheduler),
        sweep=sweep_timings(settings.leases),
        ledger_sink=LedgerSink(path) if path is not None else None,
        autoscaler=create_service(settings, db),
        billing_due=Trigger(),
    )


def prepare_database(services: Services) -> None:
    """Create the data directory, migrate and seed the database (idempotent; safe on every
    replica)."""
    settings, db = services.settings, services.db
    database, billing = settings.database, settings.billing
    if not database.is_postgres:
        database.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(db)
    with write_transaction(db) as uow:
        ensure_state(uow)
        ensure_billing(
            uow,
            billing.bill_llm_from_workunit_completed,
            billing.bill_llm_from_invocation,
            billing.usd_per_cpu_s,
        )
