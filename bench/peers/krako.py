"""Krako under the comparison workload: real ``krako-control-plane`` and ``krako-agent``
processes on a fresh database per figure, driven only through the public HTTP API.

Each figure gets its own control plane and database, so no figure inherits another's backlog,
event log or caches. The admission mode is pinned OPEN for an hour on every control plane
(``PUT /v1/capacity/mode``) so the autoscaler cannot throttle the benchmark. Durable commits
and billing are the defaults and are left on.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from peers.common import (
    Figure,
    RunContext,
    Workload,
    cpu_per_command,
    create_pg_database,
    drain,
    drop_pg_database,
    idle_cpu_per_s,
    one_at_a_time,
    round_trips,
)
from peers.procs import Child, free_port, wait_until

ADMIN = "bench-compare-admin-token-0123456789"
JOIN = "bench-compare-join-token-0123456789"
UNIT: dict[str, Any] = {
    "kind": "cpu",
    "execution_session_id": "bench",
    "payload": {"handler": "noop"},
}
BACKENDS = ("sqlite", "postgresql")


def _program(name: str) -> str:
    """A console script of this environment (the public process, wherever its module lives)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install Krako first (pip install -e .)")
    return found


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Database:
    url: str
    drop: Callable[[], None]


def make_database(ctx: RunContext, backend: str, tag: str) -> Database:
    if backend == "sqlite":
        path = ctx.workdir / f"krako-{tag}.db"

        def drop_sqlite() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        return Database(f"sqlite:///{path}", drop_sqlite)
    name = f"krako_bench_{ctx.run_id}_{tag}"
    url = create_pg_database(ctx.pg_url, name)
    return Database(url, lambda: drop_pg_database(ctx.pg_url, name))


@dataclass
class ControlPlane:
    """One ``krako-control-plane`` with a tenant of its own and the mode pinned OPEN."""

    ctx: RunContext
    db_url: str
    name: str
    extra_env: dict[str, str] = field(default_factory=dict)
    child: Child | None = None
    base: str = ""
    tenant: dict[str, str] = field(default_factory=dict)
    agents: list[Child] = field(default_factory=list)

    admin = _auth(ADMIN)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.ctx.env.items() if not k.startswith("KRAKO_")}
        env.update(
            KRAKO_DATABASE_URL=self.db_url,
            KRAKO_DATA_DIR=str(self.ctx.workdir / f"{self.name}-data"),
            KRAKO_ADMIN_TOKEN=ADMIN,
            KRAKO_NODE_JOIN_TOKEN=JOIN,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> ControlPlane:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        argv = [_program("krako-control-plane"), "--host", "127.0.0.1", "--port", str(port)]
        self.child = self.ctx.children.start(self.name, argv, env=self.env())
        wait_until(
            lambda: httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200,
            what=f"{self.name} /readyz",
            timeout=60,
            watch=[self.child],
        )
        with httpx.Client(base_url=self.base, timeout=30) as c:
            r = c.post("/v1/tenants", json={"name": "bench"}, headers=self.admin)
            r.raise_for_status()
            self.tenant = _auth(r.json()["api_key"])
            r = c.put(
                "/v1/capacity/mode",
                json={"mode": "OPEN", "reason": "bench", "ttl_s": 3600},
                headers=self.admin,
            )
            r.raise_for_status()
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def start_agents(self, count: int, concurrency: int, *, wait: bool = True) -> None:
        env = self.env()
        env["KRAKO_LOG_LEVEL"] = "WARNING"  # per-unit INFO lines would cost the agents CPU
        names = [f"{self.name}-agent-{i}" for i in range(count)]
        for node_id in names:
            home = self.ctx.workdir / node_id
            home.mkdir(exist_ok=True)
            argv = [
                _program("krako-agent"),
                "--control-plane",
                self.base,
                "--join-token",
                JOIN,
                "--node-id",
                node_id,
                "--kinds",
                "cpu",
                "--max-concurrency",
                str(concurrency),
            ]
            self.agents.append(self.ctx.children.start(node_id, argv, env=env, cwd=home))
        if wait:

            def registered() -> bool:
                r = httpx.get(f"{self.base}/v1/nodes", headers=self.admin, timeout=5)
                healthy = {n["node_id"] for n in r.json()["items"] if n["health"] == "healthy"}
                return healthy >= set(names)

            wait_until(registered, what="agents registered", watch=self.agents)

    def stop_agents(self) -> None:
        self.ctx.children.stop(self.agents)
        self.agents = []

    def stop(self) -> None:
        self.stop_agents()
        if self.child is not None:
            self.ctx.children.stop([self.child])
            self.child = None


class Completions:
    """Counts ``workunit.completed`` events with the events long-poll (its own connection).

    Each request costs the control plane CPU the workload then lacks, so a request follows a
    page with events only ``SPACING_S`` later: at most 20 requests a second, each folding in
    every completion since the last, and the last completion is seen within ~50 ms."""

    SPACING_S = 0.05

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, headers=ControlPlane.admin, timeout=30)
        self.after = 0
        self.done = 0
        self.requests = 0
        self.next_at = 0.0

    def __call__(self) -> int:
        # the wait comes before a request, not after a reply, so the last completion's
        # reply is counted the moment it arrives
        time.sleep(max(0.0, self.next_at - time.monotonic()))
        r = self.client.get(
            "/v1/events",
            params={"after": self.after, "type": "workunit.completed", "limit": 1000, "wait_s": 1},
        )
        r.raise_for_status()
        page = r.json()
        self.done += len(page["events"])
        self.after = page["last_seq"]
        self.requests += 1
        if page["events"]:
            self.next_at = time.monotonic() + self.SPACING_S
        return self.done

    def close(self) -> None:
        self.client.close()


class Submitter:
    """``POST /v1/workunits`` one at a time over one keep-alive connection. A 429 (admission)
    is waited out and counted; with the mode pinned OPEN there should be none."""

    def __init__(self, cp: ControlPlane) -> None:
        self.client = httpx.Client(base_url=cp.base, headers=cp.tenant, timeout=60)
        self.rejected = 0

    def submit(self, _i: int = 0) -> dict[str, Any]:
        while True:
            r = self.client.post("/v1/workunits", json=UNIT)
            if r.status_code != 429:
                r.raise_for_status()
                body: dict[str, Any] = r.json()
                return body
            self.rejected += 1
            time.sleep(float(r.headers.get("Retry-After", "1")))

    def close(self) -> None:
        self.client.close()


def e2e_and_round_trip(ctx: RunContext, backend: str, wl: Workload) -> dict[str, Figure]:
    """Figure 1, then figure 3 on the same (now idle) control plane and agents."""
    label = f"krako/{backend}"
    db = make_database(ctx, backend, "e2e")
    cp = ControlPlane(ctx, db.url, f"krako-{backend}-e2e")
    try:
        cp.start()
        cp.start_agents(wl.workers, wl.concurrency)
        ctx.progress.note(f"{label}: end to end, {wl.units} units one request at a time")
        sub, count = Submitter(cp), Completions(cp.base)
        try:
            e2e = one_at_a_time(
                sub.submit,
                count,
                units=wl.units,
                time_limit=wl.time_limit,
                label=f"{label} e2e",
                progress=ctx.progress,
            )
            e2e["admission_rejections"] = sub.rejected
            # a run cut short leaves a backlog: let it finish so the round trip is on idle
            wait_until(
                lambda: count() >= e2e["submitted"],
                what="the end-to-end backlog to finish",
                timeout=120,
                watch=cp.agents,
            )
            ctx.progress.note(f"{label}: round trip x {wl.round_trips}")

            def one() -> None:
                unit = sub.submit()
                r = sub.client.get(f"/v1/workunits/{unit['id']}", params={"wait_s": 5})
                r.raise_for_status()
                if r.json()["status"] != "completed":
                    raise RuntimeError(f"round trip: unit {unit['id']} not completed in 5 s")

            rt = round_trips(
                one,
                samples=wl.round_trips,
                warmup=wl.warmup,
                label=f"{label} round trip",
                progress=ctx.progress,
                method="POST /v1/workunits, then GET /v1/workunits/{id}?wait_s=5 until "
                "completed (same keep-alive connection)",
            )
        finally:
            sub.close()
            count.close()
        return {"e2e": e2e, "round_trip": rt}
    finally:
        cp.stop()
        db.drop()


def backlog_drain(ctx: RunContext, backend: str, wl: Workload) -> Figure:
    """Figure 2: batch-submit the backlog with no agent, then start the agents."""
    label = f"krako/{backend}"
    db = make_database(ctx, backend, "drain")
    cp = ControlPlane(ctx, db.url, f"krako-{backend}-drain")
    try:
        cp.start()
        count = Completions(cp.base)
        client = httpx.Client(base_url=cp.base, headers=cp.tenant, timeout=120)

        def enqueue_all() -> None:
            for start in range(0, wl.units, 1000):
                n = min(1000, wl.units - start)
                r = client.post("/v1/workunits/batch", json={"units": [UNIT] * n})
                r.raise_for_status()
                bad = [x for x in r.json()["results"] if x["status"] != 201]
                if bad:
                    raise RuntimeError(f"batch submit refused {len(bad)} units: {bad[0]}")

        try:
            return drain(
                enqueue_all,
                lambda: cp.start_agents(wl.workers, wl.concurrency, wait=False),
                count,
                units=wl.units,
                time_limit=wl.time_limit,
                label=f"{label} drain",
                progress=ctx.progress,
            )
        finally:
            client.close()
            count.close()
    finally:
        cp.stop()
        db.drop()


def command_cpu(ctx: RunContext, backend: str, wl: Workload) -> dict[str, Figure]:
    """Figures 4 and 5: the control plane's CPU per submit, claim and completion, with the
    benchmark itself as the only node; then batch-submit throughput (100 units a request).

    No agent runs: the submit figure sees no placement work, and the claim and completion
    figures are one request each, driven by the benchmark as a node (registered with the join
    token). Leases and the heartbeat timeout are stretched to 15 minutes on this control plane
    so the silent benchmark node stays healthy and its claims stay live."""
    label = f"krako/{backend}"
    db = make_database(ctx, backend, "cpu")
    cp = ControlPlane(
        ctx,
        db.url,
        f"krako-{backend}-cpu",
        {"KRAKO_LEASE_S": "900", "KRAKO_HEARTBEAT_TIMEOUT_S": "900"},
    )
    n, warm = wl.commands, max(1, min(20, wl.commands))
    try:
        cp.start()
        sub = Submitter(cp)
        node = httpx.Client(base_url=cp.base, timeout=60)
        admin = httpx.Client(base_url=cp.base, headers=cp.admin, timeout=60)
        try:
            for _ in range(warm):
                sub.submit()
            idle = idle_cpu_per_s(cp.pid, 1.0)
            figures: dict[str, Figure] = {}

            def submits() -> int:
                for i in range(n):
                    sub.submit()
                    if i % 50 == 0:
                        ctx.progress.show(f"{label} cpu", f"submit {i}/{n}")
                return n

            ctx.progress.note(f"{label}: control-plane CPU per command x {n}")
            figures["submit"] = cpu_per_command(cp.pid, submits, idle_per_s=idle)

            r = node.post(
                "/v1/nodes",
                json={
                    "node_id": "bench-probe",
                    "supported_kinds": ["cpu"],
                    "max_concurrency": min(10_000, n + warm),
                },
                headers=_auth(JOIN),
            )
            r.raise_for_status()
            node.headers.update(_auth(r.json()["node_token"]))

            def all_offered() -> bool:
                running = admin.get("/v1/nodes/bench-probe").json()["running"]
                return int(running) >= min(10_000, n + warm)

            wait_until(all_offered, what="units offered to the benchmark node", timeout=120)
            time.sleep(0.5)
            misses = 0

            def claim_one() -> dict[str, Any]:
                nonlocal misses
                while True:
                    r = node.post(
                        "/v1/nodes/bench-probe/poll",
                        json={"claim": True, "max_units": 1, "wait_s": 0},
                    )
                    r.raise_for_status()
                    claims: list[dict[str, Any]] = r.json()["claims"]
                    if claims:
                        return claims[0]
                    misses += 1

            def complete(claim: dict[str, Any]) -> None:
                r = node.post(
                    f"/v1/workunits/{claim['work_unit']['id']}/complete",
                    json={"claim_token": claim["claim_token"], "result": {}, "cpu_ms": 1},
                )
                r.raise_for_status()

            for _ in range(warm):
                complete(claim_one())
            idle = idle_cpu_per_s(cp.pid, 0.5)
            held: list[dict[str, Any]] = []

            def claims() -> int:
                for i in range(n):
                    held.append(claim_one())
                    if i % 50 == 0:
                        ctx.progress.show(f"{label} cpu", f"claim {i}/{n}")
                return n

            figures["claim"] = cpu_per_command(cp.pid, claims, idle_per_s=idle)
            figures["claim"]["empty_polls"] = misses

            def completions() -> int:
                for i, claim in enumerate(held):
                    complete(claim)
                    if i % 50 == 0:
                        ctx.progress.show(f"{label} cpu", f"complete {i}/{n}")
                return len(held)

            figures["complete"] = cpu_per_command(cp.pid, completions, idle_per_s=idle)
            ctx.progress.done()

            # the node leaves (or, where removal is not offered, is drained), so the
            # batch-submitted units stay queued: the figure is the submit cost alone
            r = admin.delete("/v1/nodes/bench-probe")
            if r.status_code in (404, 405):
                r = admin.post("/v1/nodes/bench-probe/drain")
            r.raise_for_status()
            idle = idle_cpu_per_s(cp.pid, 0.5)
            ctx.progress.note(f"{label}: batch submit, {wl.batch_units} units x 100 a request")

            def batches() -> int:
                for start in range(0, wl.batch_units, 100):
                    k = min(100, wl.batch_units - start)
                    r = sub.client.post("/v1/workunits/batch", json={"units": [UNIT] * k})
                    r.raise_for_status()
                    ctx.progress.show(f"{label} batch", f"{start + k}/{wl.batch_units} units")
                return wl.batch_units

            batch = cpu_per_command(cp.pid, batches, idle_per_s=idle)
            ctx.progress.done()
            figures["batch_submit"] = {
                "units": wl.batch_units,
                "per_request": 100,
                "seconds": batch["wall_s"],
                "units_per_s": batch["commands_per_s"],
                "cpu_ms_per_unit": batch["cpu_ms_per_command"],
                "cpu": batch,
            }
            return figures
        finally:
            sub.close()
            node.close()
            admin.close()
    finally:
        cp.stop()
        db.drop()
