"""Two control-plane replicas on one PostgreSQL database, with real agent processes on each:
every unit runs to completion exactly once, and a long-poll on one replica wakes when the
other replica places work (LISTEN/NOTIFY), well before any fallback re-check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, JOIN, ControlPlane, auth

pytestmark = pytest.mark.slow


def _agent(cp: ControlPlane, node_id: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRAKO_")}
    state = workdir / node_id
    state.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node_agent",
            "--control-plane",
            cp.url,
            "--join-token",
            JOIN,
            "--node-id",
            node_id,
            "--state-dir",
            str(state),
            "--max-concurrency",
            "8",
            "--poll-wait",
            "20",
            "--kinds",
            "cpu",
            "--log-level",
            "warning",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _all_events(c: httpx.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.get("/v1/events", params={"after": after, "limit": 1000}, headers=auth(ADMIN))
        page.raise_for_status()
        body = page.json()
        if not body["events"]:
            return out
        out.extend(body["events"])
        after = body["last_seq"]


def _wait_node(c: httpx.Client, node_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if c.get(f"/v1/nodes/{node_id}", headers=auth(ADMIN)).status_code == 200:
            return
        time.sleep(0.05)
    pytest.fail(f"agent {node_id} never registered")


def test_two_replicas_share_work_exactly_once(
    backend: str, control_plane: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL database")
    a = control_plane()
    b = control_plane()
    agents: list[subprocess.Popen[bytes]] = []
    try:
        with a.client() as ca, b.client() as cb:
            key = ca.post("/v1/tenants", json={"name": "r"}, headers=auth(ADMIN)).json()["api_key"]
            tenant = auth(key)
            agents.append(_agent(b, "on-b-1", tmp_path))
            _wait_node(cb, "on-b-1")
            time.sleep(0.3)  # the agent is now idle in a 20 s long-poll on replica B
            t0 = time.monotonic()
            unit = {"kind": "cpu", "execution_session_id": "x", "payload": {"handler": "noop"}}
            first = ca.post("/v1/workunits", json=unit, headers=tenant).json()
            done = ca.get(f"/v1/workunits/{first['id']}", params={"wait_s": 15}, headers=tenant)
            woke_s = time.monotonic() - t0
            assert done.json()["status"] == "completed"
            assert woke_s < 3.0, f"the long-poll on B woke {woke_s:.1f}s after A placed work"

            agents.append(_agent(b, "on-b-2", tmp_path))
            agents.append(_agent(a, "on-a-1", tmp_path))
            sleep = {
                "kind": "cpu",
                "execution_session_id": "burst",
                "payload": {"handler": "sleep", "args": {"ms": 20}},
            }
            for client in (ca, cb):
                r = client.post(
                    "/v1/workunits/batch", json={"units": [sleep] * 100}, headers=tenant
                )
                assert r.status_code == 200
                assert all(x["status"] == 201 for x in r.json()["results"])
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                page = cb.get(
                    "/v1/workunits",
                    params={"status": "completed", "limit": 1000},
                    headers=tenant,
                ).json()
                if len(page["items"]) == 201:
                    break
                time.sleep(0.3)
            events = _all_events(ca)
    finally:
        _stop(agents)
    completed = Counter(e["stream_id"] for e in events if e["type"] == "workunit.completed")
    submitted = {e["stream_id"] for e in events if e["type"] == "workunit.submitted"}
    assert len(submitted) == 201
    assert set(completed) == submitted, "a unit did not complete"
    assert max(completed.values()) == 1, "a unit completed twice"
    claims = Counter(
        (e["stream_id"], e["payload"]["attempt"]) for e in events if e["type"] == "workunit.claimed"
    )
    assert max(claims.values()) == 1, "an attempt was claimed twice"
    ran_on = {e["payload"]["node_id"] for e in events if e["type"] == "workunit.completed"}
    assert {"on-a-1", "on-b-1", "on-b-2"} <= ran_on or len(ran_on) >= 2
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(e["event_id"] for e in events)) == len(events)
