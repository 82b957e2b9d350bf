"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from control_plane.api.deps import ServicesDep
from control_plane.capacity.mode import read_report
from control_plane.db.migrate import is_migrated
from control_plane.errors import Unavailable
from shared.wire import CapacityReport

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    operation_id="healthz",
    summary="Liveness",
    description="The process is alive.",
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness",
    description="The database is reachable and migrated to head (503 otherwise).",
)
async def readyz(services: ServicesDep) -> dict[str, str]:
    try:
        ok = await run_in_threadpool(is_migrated, services.db)
    except Exception as exc:
        raise Unavailable(f"database unreachable: {exc.__class__.__name__}")
    if not ok:
        raise Unavailable("database schema is not at the head revision")
    return {"status": "ready"}


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    description="Queue depth, running units, nodes, capacity mode, waiting long-polls.",
    response_class=PlainTextResponse,
)
async def metrics(services: ServicesDep) -> str:
    cap = await run_in_threadpool(read_report, services.db)
    return prometheus_text(cap, services.notifier.waiter_count())


def prometheus_text(cap: CapacityReport, waiters: int) -> str:
    """The metrics in Prometheus' text format."""
    lines = [
        "# HELP krako_queue_depth Queued work units by priority.",
        "# TYPE krako_queue_depth gauge",
    ]
    lines += [f'krako_queue_depth{{priority="{p}"}} {n}' for p, n in cap.queue_depth.items()]
    lines += [
        "# TYPE krako_running gauge",
        f"krako_running {cap.running}",
        "# TYPE krako_healthy_nodes gauge",
        f"krako_healthy_nodes {cap.healthy_nodes}",
        "# TYPE krako_utilization gauge",
        f"krako_utilization {cap.utilization}",
        "# TYPE krako_capacity_mode gauge",
    ]
    lines += [
        f'krako_capacity_mode{{mode="{m}"}} {1 if cap.mode.value == m else 0}'
        for m in ("OPEN", "THROTTLED", "CRITICAL")
    ]
    lines += ["# TYPE krako_waiters gauge", f"krako_waiters {waiters}"]
    return "\n".join(lines) + "\n"
