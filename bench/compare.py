"""Krako beside Celery + Redis and pgqueuer, on the same machine in the same run.

    python bench/compare.py [--quick] [--systems krako,celery,pgqueuer]
                            [--backends sqlite,postgresql] [--units N] [--round-trips N]
                            [--commands N] [--json out.json]

Every process is real and started by the harness (control planes, agents, Celery workers,
pgqueuer workers, a private redis-server, the baseline app), each in its own process group,
and every one is ended, and every throwaway database dropped, on success, on error and on
Ctrl-C. Compare figures within one run only: the machine may be shared and noisy.

Workload (the performance issue's): 5,000 no-op units; two worker processes per system, each
with 16 slots; durable commits; Krako with billing on (its default) and the admission mode
pinned OPEN for the run so the autoscaler cannot throttle it.

What each figure measures
1. End to end, one at a time: N units submitted one call at a time by one client while the
   workers run (Krako: ``POST /v1/workunits`` over one keep-alive ``httpx.Client``; Celery:
   ``send_task``; pgqueuer: ``Queries.enqueue`` of one job on one asyncpg connection). Units/s
   from the first submit to the moment the harness saw the last completion. A run that hits
   ``--time-limit`` is reported with how many were submitted and done, marked with ``*``, and
   its rate is over the time it had; it is never silently dropped.
2. Backlog drain: N units queued with no worker running (Krako: ``POST /v1/workunits/batch`` of
   1,000 with no agent started; Celery: ``send_task`` with no worker; pgqueuer: ``enqueue`` of
   1,000 jobs a call), then the workers start. Units/s from the first completion seen to the
   last, so worker start-up (Celery's prefork pool is the slowest to start) is not counted; the
   rate from the workers' start is in the JSON as well.
3. Round trip: one unit at a time on an otherwise idle system, from the submit call until the
   client has seen the unit completed, p50 and p99 over ``--round-trips`` after 5 untimed
   ones. Krako: ``POST`` then ``GET /v1/workunits/{id}?wait_s=5``. Celery: ``send_task`` then
   ``AsyncResult.get()`` (Redis result backend, pub/sub). pgqueuer has no "wait for this job"
   call of its own on the producer side besides ``CompletionWatcher`` (LISTEN/NOTIFY on the
   queue table, then a status query), used here with a 1 ms debounce instead of its 50 ms
   default. Its workers buffer finished jobs' status writes until a dequeue batch is full or
   a 100 ms timer fires, so its headline row uses workers with ``batch_size=1`` (the setting a
   latency-minded user picks; every finished job is written at once) and a second row shows
   the throughput workers (``batch_size=10``), whose round trip is mostly that timer.
4. Krako only, control-plane CPU per command: utime + stime of the control-plane process from
   ``/proc/<pid>/stat`` over ``--commands`` commands of each kind, plus a 0.3 s settle (work a
   command hands to a background task counts), minus the process's idle CPU rate measured just
   before. Submit: single ``POST /v1/workunits`` with no agent running. Claim: the harness
   registers a node of its own with the join token, waits until every unit is offered to it,
   then polls ``{"claim": true, "max_units": 1, "wait_s": 0}`` once per unit. Completion:
   ``POST /v1/workunits/{id}/complete`` for each claimed unit. Beside them a trivial FastAPI
   app (uvicorn, one worker, a POST with a small pydantic body; ``peers/baseline_app.py``) is
   measured the same way in the same run, and each Krako figure is printed as ms and as a
   ratio to it. The resolution is one clock tick (10 ms), so use a few hundred commands.
5. Krako only, batch submit: ``--batch-units`` units (default ``--units``) in batch requests of 100,
   one client, units/s (and control-plane CPU per unit in the JSON).

Workers, and why
- Krako: two ``krako-agent --max-concurrency 16 --kinds cpu`` (the issue's setting), log level
  WARNING; each figure has its own control plane on a fresh database.
- Celery 5: two ``celery worker --pool prefork --concurrency 16`` processes, ``acks_late`` and
  ``task_reject_on_worker_lost`` (a task is acknowledged after it ran), gossip, mingle and the
  worker heartbeat off, log level WARNING. Prefork is Celery's default pool and what most
  deployments run, and 16 processes a worker mirror Krako's 16 slots an agent. On two cores the
  32 pool processes are oversubscribed, but with no-op tasks they mostly wait on their parent,
  which does the broker and result work; ``--celery-pool threads`` (or ``solo``) runs the
  other choices for a reader who prefers them. Redis: a private ``redis-server`` with
  ``appendonly yes, appendfsync always``, so a queued or finished task is on disk before it is
  acknowledged, like Krako's commits; ``--redis-url`` uses an existing server as configured
  (its durability settings are recorded in the JSON and printed).
- pgqueuer 1.x: two worker processes (``peers/pgqueuer_worker.py``), one asyncpg connection
  each, on uvloop as pgqueuer's CLI does, ``QueueManager.run`` with its defaults (dequeue batch
  10, no concurrency cap: with no-op jobs at most a batch is in flight, so a cap of 16 would
  never bind and would only add its clauses to every dequeue). PostgreSQL only, on the same
  server and settings as Krako's PostgreSQL backend (``synchronous_commit`` recorded).

What would make a comparison unfair (check before quoting a figure)
- Durability: Celery on a Redis without ``appendfsync always`` (the ``redis`` label instead of
  ``redis-aof``) or PostgreSQL with ``synchronous_commit=off`` acknowledge work that a crash
  loses; Krako's SQLite backend commits with ``synchronous=FULL``.
- Work per unit: Krako's figures include what Krako does and the peers do not (placement,
  leases, an event per step, the billing projection and its ledger lines); the peers record
  only a result or a log row. That is the product, but say so when quoting a ratio.
- Completion detection: the harness sees completions by polling (Celery: ``MGET`` of the
  result keys, pgqueuer: a count of the queue table, every 10 ms) or by Krako's events
  long-poll (at most 20 requests a second, since each costs the control plane CPU the
  workload then lacks), so end times carry up to ~10 ms (peers) or ~50 ms (Krako) of
  detection delay: nothing on 5,000 units, a few per cent of a ``--quick`` drain.
- Client cost: one client, one call at a time, in the harness process. Celery's client
  subscribes to each task's result channel (its redis backend does that for every send);
  pgqueuer's client is asyncpg on uvloop; Krako's is httpx. All of it shares the two cores
  with the servers and workers.
- Start-up: drain rates exclude worker start-up; end-to-end and round-trip figures start after
  warm-up units went through, so none of them counts a cold connection or import.
- Noise: other processes on the machine (the JSON has the load average before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import baseline, krako
from peers.common import Progress, RunContext, Workload
from peers.procs import Children

SYSTEMS = ("krako", "celery", "pgqueuer")
INSTALL_HINT = "pip install -e '.[bench]'"
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a one-minute look: fewer units")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="krako,celery,pgqueuer")
    p.add_argument("--backends", default="sqlite,postgresql", help="Krako's and pgqueuer's")
    p.add_argument("--units", type=int, help="units per throughput figure (5000; quick 500)")
    p.add_argument("--round-trips", type=int, help="timed round trips (200; quick 50)")
    p.add_argument("--commands", type=int, help="commands per CPU figure (1000; quick 200)")
    p.add_argument("--batch-units", type=int, help="units for the batch-submit figure (--units)")
    p.add_argument("--time-limit", type=float, help="seconds per figure (300; quick 60)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per system")
    p.add_argument("--concurrency", type=int, default=16, help="slots per worker process")
    p.add_argument("--celery-pool", default="prefork", choices=("prefork", "threads", "solo"))
    p.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    p.add_argument("--pg-url", default=PG_URL, help="PostgreSQL server (an admin database)")
    p.add_argument("--json", type=Path, help="where to write every raw figure")
    args = p.parse_args(argv)
    quick = args.quick
    args.units = args.units or (500 if quick else 5000)
    args.round_trips = args.round_trips or (50 if quick else 200)
    args.commands = args.commands or (200 if quick else 1000)
    args.batch_units = args.batch_units or args.units
    args.time_limit = args.time_limit or (60.0 if quick else 300.0)
    args.systems = [s for s in args.systems.split(",") if s]
    args.backends = [b for b in args.backends.split(",") if b]
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    for b in args.backends:
        if b not in krako.BACKENDS:
            p.error(f"unknown backend {b!r}; choose from {', '.join(krako.BACKENDS)}")
    return args


# -- environment ------------------------------------------------------------------------------


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
        "packages": _versions(
            (
                "krako",
                "fastapi",
                "uvicorn",
                "starlette",
                "pydantic",
                "httpx",
                "sqlalchemy",
                "psycopg",
                "orjson",
                "uvloop",
                "celery",
                "kombu",
                "redis",
                "pgqueuer",
                "asyncpg",
            )
        ),
    }
    if "postgresql" in args.backends:
        try:
            import psycopg

            with psycopg.connect(args.pg_url, connect_timeout=5) as conn:
                env["postgresql"] = {
                    k: str(conn.execute(f"SHOW {k}").fetchone()[0])  # type: ignore[index]
                    for k in ("server_version", "synchronous_commit", "fsync", "wal_level")
                }
        except Exception as exc:  # the backend is then skipped with this reason
            env["postgresql"] = {"error": str(exc)}
    return env


# -- tables -----------------------------------------------------------------------------------


def render(title: str, headers: list[str], rows: list[list[str]], notes: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    out = [f"\n== {title}", fmt(headers), line, *(fmt(r) for r in rows)]
    out += [f"   {n}" for n in notes]
    return "\n".join(out)


def ratio_columns(rows: dict[str, float], peers: list[str]) -> Callable[[str], list[str]]:
    def cells(name: str) -> list[str]:
        mine = rows.get(name)
        out = []
        for peer in peers:
            other = rows.get(peer)
            if peer == name or mine is None or not other:
                out.append("-")
            else:
                out.append(f"{mine / other:.2f}x")
        return out

    return cells


def tables(figures: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    parts: list[str] = []
    timeouts: list[str] = []

    def throughput(key: str, title: str, detail: Callable[[dict[str, Any]], str]) -> None:
        found = figures.get(key, {})
        if not found:
            return
        names = list(found)
        rate = {n: float(found[n]["units_per_s"]) for n in names}
        cells = ratio_columns(rate, names)
        rows = []
        for n in names:
            f = found[n]
            star = "" if f["finished"] else "*"
            if not f["finished"]:
                timeouts.append(
                    f"* {n} {key}: did not finish in {f['time_limit_s']:.0f} s: "
                    f"{f.get('submitted', f['units'])} submitted, {f['completed']} of "
                    f"{f['units']} done"
                )
            rows.append([n, f"{rate[n]:,.0f}{star}", detail(f), *cells(n)])
        notes = ["ratio: this row's units/s / that column's (above 1: this row is faster)"]
        parts.append(
            render(title, ["system", "units/s", "detail", *[f"vs {n}" for n in names]], rows, notes)
        )

    throughput(
        "e2e",
        f"1. end to end, one at a time ({args.units} units, first submit -> last completion)",
        lambda f: f"submit {f['submit_per_s']:,.0f}/s",
    )
    throughput(
        "drain",
        f"2. backlog drain ({args.units} queued, first -> last completion)",
        lambda f: f"{f['units_per_s_from_worker_start']:,.0f}/s from worker start",
    )

    rt = figures.get("round_trip", {})
    if rt:
        main = [n for n in rt if not n.endswith(")")]
        p50 = {n: float(rt[n]["p50_ms"]) for n in rt}
        cells = ratio_columns(p50, main)
        rows = [[n, f"{rt[n]['p50_ms']:.2f}", f"{rt[n]['p99_ms']:.2f}", *cells(n)] for n in rt]
        parts.append(
            render(
                f"3. round trip, submit -> seen completed ({args.round_trips} on an idle system)",
                ["system", "p50 ms", "p99 ms", *[f"vs {n}" for n in main]],
                rows,
                ["ratio: this row's p50 / that column's (below 1: this row is faster)"],
            )
        )

    cpu = figures.get("cpu_per_command", {})
    if cpu:
        base = cpu.get("baseline")
        rows = []
        if base:
            rows.append(
                [
                    "bare FastAPI POST",
                    str(base["commands"]),
                    f"{base['cpu_ms_per_command']:.3f}",
                    "1.00x",
                    f"{base['commands_per_s']:,.0f}",
                ]
            )
        for name, kinds in cpu.items():
            if name == "baseline":
                continue
            for kind in ("submit", "claim", "complete"):
                f = kinds[kind]
                ratio = f.get("ratio_to_baseline")
                rows.append(
                    [
                        f"{name} {kind}",
                        str(f["commands"]),
                        f"{f['cpu_ms_per_command']:.3f}",
                        f"{ratio:.2f}x" if ratio else "-",
                        f"{f['commands_per_s']:,.0f}",
                    ]
                )
        parts.append(
            render(
                "4. Krako control-plane CPU per command (utime+stime, idle rate subtracted)",
                ["command", "n", "CPU ms", "vs bare FastAPI", "commands/s (1 client)"],
                rows,
                [f"baseline: {base['commands']} trivial POSTs" if base else "no baseline"],
            )
        )

    batch = figures.get("batch_submit", {})
    if batch:
        names = list(batch)
        rate = {n: float(batch[n]["units_per_s"]) for n in names}
        cells = ratio_columns(rate, names)
        rows = [
            [n, f"{rate[n]:,.0f}", f"{batch[n]['cpu_ms_per_unit']:.3f}", *cells(n)] for n in names
        ]
        parts.append(
            render(
                f"5. Krako batch submit ({args.batch_units} units, 100 a request, 1 client)",
                ["system", "units/s", "CPU ms/unit", *[f"vs {n}" for n in names]],
                rows,
                [],
            )
        )
    if timeouts:
        parts.append("\n" + "\n".join(timeouts))
    return "\n".join(parts)


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` (process groups, throwaway
    databases) runs whichever way the harness is stopped."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    # also when started with SIGINT ignored (a background job of a script)
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="krako-compare-"))
    json_path: Path = args.json or workdir / "compare.json"
    progress = Progress()
    children = Children(workdir)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KRAKO_")}
    base_env["PYTHONUNBUFFERED"] = "1"
    ctx = RunContext(workdir, children, progress, uuid.uuid4().hex[:8], args.pg_url, base_env)
    wl = Workload(
        units=args.units,
        round_trips=args.round_trips,
        commands=args.commands,
        batch_units=args.batch_units,
        time_limit=args.time_limit,
        workers=args.workers,
        concurrency=args.concurrency,
    )
    report: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(args),
        "figures": {},
        "skipped": {},
        "errors": {},
        "logs": str(workdir),
    }
    figures: dict[str, dict[str, Any]] = report["figures"]
    failed = False

    def record(key: str, row: str, value: dict[str, Any]) -> None:
        figures.setdefault(key, {})[row] = value

    def skip(what: str, why: str) -> None:
        report["skipped"][what] = why
        progress.note(f"{what}: skipped: {why}")

    def attempt(what: str, step: Callable[[], None]) -> None:
        nonlocal failed
        try:
            step()
        except Exception as exc:
            failed = True
            report["errors"][what] = "".join(traceback.format_exception(exc))
            progress.note(f"{what}: FAILED: {exc}")

    pg_error = report["environment"].get("postgresql", {}).get("error")
    backends = list(args.backends)
    if pg_error and "postgresql" in backends:
        backends.remove("postgresql")
        skip("postgresql", f"server not reachable at {args.pg_url}: {pg_error}")

    progress.note(f"run {ctx.run_id}: logs and data in {workdir}")
    try:
        with terminate_as_interrupt():
            if "krako" in args.systems:

                def run_baseline() -> None:
                    requests = max(wl.commands, 1000)
                    figure = baseline.measure(children, base_env, requests, progress)
                    record("cpu_per_command", "baseline", figure)

                attempt("baseline", run_baseline)
                for backend in backends:
                    attempt(f"krako/{backend}", lambda b=backend: run_krako(ctx, wl, b, record))
            if "celery" in args.systems:
                attempt("celery", lambda: run_celery(ctx, wl, args, report, record, skip))
            if "pgqueuer" in args.systems:
                if "postgresql" not in backends:
                    skip("pgqueuer", "it runs on PostgreSQL only, which is not in this run")
                else:
                    attempt("pgqueuer", lambda: run_pgqueuer(ctx, wl, report, record, skip))
    except KeyboardInterrupt:
        progress.note("interrupted: stopping every process and dropping the databases")
        report["errors"]["interrupted"] = "the run was interrupted"
        failed = True
    finally:
        children.stop_all()
        add_ratios(figures)
        report["environment"]["loadavg_end"] = os.getloadavg()
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str))
    progress.done()
    print(tables(figures, args))
    for what, why in report["skipped"].items():
        print(f"skipped {what}: {why}")
    for what in report["errors"]:
        print(f"FAILED {what} (traceback in the JSON; logs in {workdir})")
    env = report["environment"]
    print(
        f"\nmachine: {env['cpu_count']} CPUs, load average {env['loadavg_start'][0]:.2f} at the "
        f"start and {env['loadavg_end'][0]:.2f} at the end; compare within this run only"
    )
    print(f"raw figures: {json_path}")
    return 1 if failed else 0


def add_ratios(figures: dict[str, dict[str, Any]]) -> None:
    cpu = figures.get("cpu_per_command", {})
    base = cpu.get("baseline", {}).get("cpu_ms_per_command")
    for name, kinds in cpu.items():
        if name == "baseline":
            continue
        for f in kinds.values():
            f["ratio_to_baseline"] = f["cpu_ms_per_command"] / base if base else None


Record = Callable[[str, str, dict[str, Any]], None]


def run_krako(ctx: RunContext, wl: Workload, backend: str, record: Record) -> None:
    row = f"krako/{backend}"
    live = krako.e2e_and_round_trip(ctx, backend, wl)
    record("e2e", row, live["e2e"])
    record("round_trip", row, live["round_trip"])
    record("drain", row, krako.backlog_drain(ctx, backend, wl))
    cpu = krako.command_cpu(ctx, backend, wl)
    record("batch_submit", row, cpu.pop("batch_submit"))
    record("cpu_per_command", row, cpu)


def run_celery(
    ctx: RunContext,
    wl: Workload,
    args: argparse.Namespace,
    report: dict[str, Any],
    record: Record,
    skip: Callable[[str, str], None],
) -> None:
    from peers import celery_peer

    why = celery_peer.missing()
    if why:
        skip("celery", f"{why}: {INSTALL_HINT}")
        return
    redis = celery_peer.RedisServer.start(ctx, args.redis_url)
    try:
        report["environment"]["redis"] = redis.durability
        report["environment"]["celery_pool"] = args.celery_pool
        figures = celery_peer.run(ctx, wl, redis, args.celery_pool)
    finally:
        redis.stop(ctx)
    row = f"celery/{redis.label}"
    for key in ("e2e", "drain", "round_trip"):
        record(key, row, figures[key])


def run_pgqueuer(
    ctx: RunContext,
    wl: Workload,
    report: dict[str, Any],
    record: Record,
    skip: Callable[[str, str], None],
) -> None:
    from peers import pgq

    why = pgq.missing()
    if why:
        skip("pgqueuer", f"{why}: {INSTALL_HINT}")
        return
    figures = pgq.run(ctx, wl)
    row = "pgqueuer/postgresql"
    record("e2e", row, figures["e2e"])
    record("drain", row, figures["drain"])
    record("round_trip", row, figures["round_trip"])
    extra = f"{row} (batch {pgq.THROUGHPUT_BATCH})"
    record("round_trip", extra, figures["round_trip_throughput_workers"])


if __name__ == "__main__":
    raise SystemExit(main())
