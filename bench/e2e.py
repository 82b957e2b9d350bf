"""End-to-end throughput and latency with real processes: a control plane and N agents.

Measures, per backend:
- submit: units/s accepted through ``POST /v1/workunits/batch`` (1000 per request);
- drain: a queued backlog of no-op units run to completion by the agents (units/s, durable,
  billed: every completion is a committed event and a ledger line);
- round trip: one unit submitted while agents idle-poll, until ``GET ?wait_s`` sees it
  completed (p50, p95 in ms).
Baseline in the same run: a bare uvicorn + FastAPI app answering a trivial POST, hit by the
same client (requests/s), which bounds what any HTTP task API can do here.

    python bench/e2e.py [--units 5000] [--agents 2] [--concurrency 64]
                        [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.procs import Child, free_port, http_ok, wait_until

ADMIN = "bench-admin-token-0123456789"
JOIN = "bench-join-token-0123456789"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path = Path(os.devnull)) -> None:
    """Until ``url`` answers; fails early (with its log) if ``proc`` exits first."""
    wait_until(lambda: http_ok(url), what=url, watch=[Child(url, proc, log)])


def baseline(requests: int) -> float:
    port = free_port()
    code = (
        "from fastapi import FastAPI\nimport uvicorn\napp = FastAPI()\n"
        "@app.post('/x')\nasync def x(body: dict) -> dict:\n    return body\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_ready(f"http://127.0.0.1:{port}/docs", proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            t0 = time.perf_counter()
            for i in range(requests):
                c.post("/x", json={"i": i})
            return requests / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


def round_trip_phases(
    sent: float, answered: float, events: list[dict[str, Any]]
) -> dict[str, float]:
    """Where one round trip's time went, from the unit's events (``recorded_at`` is the clock
    of the transaction that wrote each; client and control plane share this machine's clock).
    Phases ending at an event end when that event's transaction began, not when it committed.
    """
    at = {
        e["type"]: datetime.fromisoformat(e["recorded_at"]).timestamp()
        for e in events
        if e["type"] in ("workunit.submitted", "workunit.claimed", "workunit.completed")
    }
    if len(at) < 3:
        return {}
    submitted, claimed = at["workunit.submitted"], at["workunit.claimed"]
    completed = at["workunit.completed"]
    return {
        "request -> submit tx": (submitted - sent) * 1000,
        "submit tx -> claim tx": (claimed - submitted) * 1000,
        "claim tx -> complete tx": (completed - claimed) * 1000,
        "complete tx -> reply": (answered - completed) * 1000,
    }


def run(name: str, db_url: str, data_dir: Path, args: argparse.Namespace) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KRAKO_DATABASE_URL": db_url,
        "KRAKO_DATA_DIR": str(data_dir),
        "KRAKO_ADMIN_TOKEN": ADMIN,
        "KRAKO_NODE_JOIN_TOKEN": JOIN,
    }
    logs = open(data_dir / f"cp-{name}.log", "wb")  # noqa: SIM115
    cp = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "control_plane.server",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    agents: list[subprocess.Popen[bytes]] = []
    try:
        wait_ready(f"{base}/readyz", cp, data_dir / f"cp-{name}.log")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=base, timeout=60) as c:
            key = c.post("/v1/tenants", json={"name": "bench"}, headers=admin).json()["api_key"]
            tenant = {"Authorization": f"Bearer {key}"}
            unit = {"kind": "cpu", "execution_session_id": "bench", "payload": {"handler": "noop"}}
            t0 = time.perf_counter()
            for start in range(0, args.units, 1000):
                n = min(1000, args.units - start)
                r = c.post("/v1/workunits/batch", json={"units": [unit] * n}, headers=tenant)
                r.raise_for_status()
            submit_rate = args.units / (time.perf_counter() - t0)

            t0 = time.perf_counter()
            for i in range(args.agents):
                agents.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "node_agent",
                            "--control-plane",
                            base,
                            "--join-token",
                            JOIN,
                            "--node-id",
                            f"bench-{i}",
                            "--max-concurrency",
                            str(args.concurrency),
                            "--kinds",
                            "cpu",
                            "--log-level",
                            "warning",
                        ],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            after, done = 0, 0
            while done < args.units:
                page = c.get(
                    "/v1/events",
                    params={
                        "after": after,
                        "type": "workunit.completed",
                        "limit": 1000,
                        "wait_s": 5,
                    },
                    headers=admin,
                ).json()
                done += len(page["events"])
                after = page["last_seq"]
                if time.perf_counter() - t0 > args.timeout:
                    raise RuntimeError(f"drain timed out after {done} units")
            drain_rate = args.units / (time.perf_counter() - t0)

            rtts: list[float] = []
            phases: dict[str, list[float]] = {}
            for _ in range(args.roundtrips):
                t1, wall1 = time.perf_counter(), time.time()
                u = c.post("/v1/workunits", json=unit, headers=tenant).json()
                got = c.get(
                    f"/v1/workunits/{u['id']}", params={"wait_s": 10}, headers=tenant
                ).json()
                wall2 = time.time()
                assert got["status"] == "completed", got
                rtts.append((time.perf_counter() - t1) * 1000)
                trail = c.get(f"/v1/workunits/{u['id']}/events", headers=tenant).json()
                for phase, ms in round_trip_phases(wall1, wall2, trail["events"]).items():
                    phases.setdefault(phase, []).append(ms)
            replay = c.post("/v1/billing/replay", headers=admin).json()
        print(
            f"\n== {name}: {args.units} no-op units, "
            f"{args.agents} agents x {args.concurrency} slots"
        )
        print(f"submit (batch 1000):     {submit_rate:>10,.0f} units/s")
        print(f"drain (end to end):      {drain_rate:>10,.0f} units/s (durable, billed)")
        print(
            f"round trip:              p50 {statistics.median(rtts):.1f} ms, "
            f"p95 {statistics.quantiles(rtts, n=20)[18]:.1f} ms over {len(rtts)}"
        )
        for phase, values in phases.items():
            print(f"  {phase:<24} p50 {statistics.median(values):.2f} ms")
        print(
            f"replay:                  {'identical' if replay['identical'] else 'DIFFERENT'} "
            f"({replay['ledger_entries']} ledger lines)"
        )
    finally:
        for a in agents:
            a.terminate()
        for a in agents:
            try:
                a.wait(10)
            except subprocess.TimeoutExpired:
                a.kill()
        cp.terminate()
        cp.wait()
        logs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5000)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--roundtrips", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(
        f"baseline: bare FastAPI/uvicorn trivial POST: {baseline(2000):,.0f} requests/s (1 client)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        if "sqlite" in args.backends:
            run("SQLite", f"sqlite:///{data / 'bench.db'}", data, args)
        if "postgresql" in args.backends:
            import psycopg

            name = f"krako_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                run("PostgreSQL", f"postgresql://postgres@127.0.0.1:5432/{name}", data, args)
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
