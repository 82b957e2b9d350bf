"""The ``local`` actuator for real: a control-plane process starts ``krako-agent`` processes
to drain a backlog, then scales them down (drain, wait until idle, SIGTERM) without losing
or repeating a unit, and stops whatever it still runs when it shuts down."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, StartControlPlane, auth
from tests.support.events import read_events
from tests.support.ports import free_port
from tests.support.processes import ControlPlaneProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def _events(c: httpx.Client, type_: str) -> list[dict[str, Any]]:
    return read_events(c, auth(ADMIN), type_)


def _wait(what: str, pred: Callable[[], Any], cp: ControlPlaneProcess) -> Any:
    return wait_until(what, pred, interval=0.1, context=cp.logs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child of the (still running) control plane that exited is a zombie until reaped
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _pids(agents_dir: Path) -> dict[str, int]:
    return {
        p.parent.name: int(p.read_text())
        for p in agents_dir.glob("local-*/agent.pid")
        if p.read_text().strip()
    }


@pytest.fixture
def backend() -> str:
    """SQLite only: the choreography of processes is the same on either backend."""
    return "sqlite"


def test_local_actuator_scales_agents_up_and_down_without_losing_a_unit(
    control_plane: StartControlPlane, tmp_path: Path
) -> None:
    port = free_port()  # the agents it starts need its URL
    cp = control_plane(
        port=port,
        KRAKO_AUTOSCALER_ACTUATOR="local",
        KRAKO_AUTOSCALER_LOCAL_CONTROL_PLANE_URL=f"http://127.0.0.1:{port}",
        KRAKO_AUTOSCALER_LOCAL_AGENT_ARGS="--max-concurrency 2 --kinds cpu --poll-wait 1 "
        "--log-level warning",
        KRAKO_AUTOSCALER_SLOTS_PER_NODE="2",
        KRAKO_AUTOSCALER_MAX_NODES="3",
        KRAKO_AUTOSCALER_INTERVAL_S="0.2",
        KRAKO_AUTOSCALER_SCALE_UP_COOLDOWN_S="0",
        KRAKO_AUTOSCALER_SCALE_DOWN_WINDOW_S="1",
        KRAKO_AUTOSCALER_MIN_HOLD_S="3600",  # this test is about nodes, not admission
        KRAKO_HEARTBEAT_INTERVAL_S="1",
        KRAKO_HEARTBEAT_TIMEOUT_S="10",
    )
    agents_dir = tmp_path / "data" / "autoscaler-agents"
    with cp.client() as c:
        r = c.post("/v1/tenants", json={"name": "scale"}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        tenant = auth(r.json()["api_key"])

        def submit(n: int, ms: int) -> list[str]:
            units = [
                {
                    "kind": "cpu",
                    "execution_session_id": f"s{i % 5}",
                    "payload": {"handler": "sleep", "args": {"ms": ms}},
                }
                for i in range(n)
            ]
            r = c.post("/v1/workunits/batch", json={"units": units}, headers=tenant)
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert all(x["status"] == 201 for x in results), results
            return [x["work_unit"]["id"] for x in results]

        def completed() -> Counter[str]:
            return Counter(e["stream_id"] for e in _events(c, "workunit.completed"))

        def nodes() -> dict[str, dict[str, Any]]:
            r = c.get("/v1/nodes", params={"limit": 100}, headers=auth(ADMIN))
            r.raise_for_status()
            return {n["node_id"]: n for n in r.json()["items"]}

        # a backlog with no node at all: the autoscaler starts agents (at most 3)
        ids = submit(30, 50)
        _wait("3 agents registered", lambda: len(nodes()) == 3, cp)
        assert set(nodes()) == {"local-1", "local-2", "local-3"}
        pids = _pids(agents_dir)
        assert set(pids) == {"local-1", "local-2", "local-3"}
        assert all(_alive(p) for p in pids.values())
        _wait("the backlog done", lambda: set(completed()) >= set(ids), cp)

        # two long units keep two slots busy: one node is enough for them, so after the
        # window the others are drained and stopped, the one running a unit only once done
        long_ids = submit(2, 2500)
        _wait("a scale-down", lambda: sum(1 for n in nodes().values() if n["drained"]) >= 1, cp)
        _wait("every unit done", lambda: set(completed()) >= set(ids + long_ids), cp)
        _wait(
            "all agents stopped",
            lambda: all(n["drained"] for n in nodes().values()) and not _pids(agents_dir),
            cp,
        )
        assert not any(_alive(p) for p in pids.values())

        done = completed()
        assert set(done) == set(ids + long_ids)
        assert all(n == 1 for n in done.values()), done  # each unit completed exactly once
        for unit_id in ids + long_ids:
            r = c.get(f"/v1/workunits/{unit_id}", headers=tenant)
            assert r.json()["status"] == "completed"
        for lost in ("workunit.lease_expired", "workunit.failed", "workunit.cancelled"):
            assert not _events(c, lost), lost

        requests = [
            (e["payload"]["from"], e["payload"]["to"])
            for e in _events(c, "capacity.scale.requested")
        ]
        assert requests[0] == (0, 3), requests
        assert requests[-1][1] == 0, requests
        assert all(e["payload"]["reason"] for e in _events(c, "capacity.scale.requested"))

        # scale up again, then stop the control plane: it stops the agents it runs
        submit(6, 50)
        _wait("a new agent", lambda: _pids(agents_dir), cp)
        again = _pids(agents_dir)
        assert not set(again) & {"local-1", "local-2", "local-3"}  # drained ids stay retired
    cp.stop()
    assert not any(_alive(p) for p in again.values())
