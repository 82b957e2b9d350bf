"""Two control-plane replicas on one PostgreSQL database, with real agent processes on each:
every unit runs to completion exactly once, and a long-poll on one replica wakes when the
other replica places work (LISTEN/NOTIFY), well before any fallback re-check."""

from __future__ import annotations

from collections import Counter

import pytest

from control_plane.api.longpoll import POLL_RECHECK_S
from tests.acceptance.conftest import ADMIN, StartControlPlane, auth
from tests.support.events import read_events
from tests.support.metrics import waiters
from tests.support.processes import AgentProcess, ControlPlaneProcess, stop_all
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def _agent(cp: ControlPlaneProcess, node_id: str) -> AgentProcess:
    flags = ("--max-concurrency", "8", "--poll-wait", "20", "--kinds", "cpu")
    return cp.agent(node_id, *flags, "--log-level", "warning", node_id=node_id).start()


def test_two_replicas_share_work_exactly_once(
    backend: str, control_plane: StartControlPlane
) -> None:
    if backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL database")
    a = control_plane()
    b = control_plane()
    agents: list[AgentProcess] = []
    try:
        with a.client() as ca, b.client() as cb:
            key = ca.post("/v1/tenants", json={"name": "r"}, headers=auth(ADMIN)).json()["api_key"]
            tenant = auth(key)
            agents.append(_agent(b, "on-b-1"))
            wait_until(
                "on-b-1 registered",
                lambda: cb.get("/v1/nodes/on-b-1", headers=auth(ADMIN)).status_code == 200,
                context=agents[0].logs,
            )
            # B holds no request but the agent's: once it counts one, the agent is idle in
            # its 20 s long-poll there, and work placed from now on must wake it
            wait_until("on-b-1's long-poll held by B", lambda: waiters(cb) >= 1)
            unit = {"kind": "cpu", "execution_session_id": "x", "payload": {"handler": "noop"}}
            first = ca.post("/v1/workunits", json=unit, headers=tenant).json()
            # By itself B's poll only re-checks every POLL_RECHECK_S: the unit completed
            # within half of that means the placement on A woke it (LISTEN/NOTIFY).
            done = ca.get(
                f"/v1/workunits/{first['id']}",
                params={"wait_s": POLL_RECHECK_S / 2},
                headers=tenant,
            )
            assert done.json()["status"] == "completed", (
                f"the long-poll on B did not wake when A placed work: {done.json()}"
            )

            agents.append(_agent(b, "on-b-2"))
            agents.append(_agent(a, "on-a-1"))
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

            def completed_units() -> int:
                params = {"status": "completed", "limit": 1000}
                page = cb.get("/v1/workunits", params=params, headers=tenant).json()
                return len(page["items"])

            wait_until(
                "all 201 units completed",
                lambda: completed_units() == 201,
                90,
                interval=0.3,
                context=lambda: f"{completed_units()} completed",
            )
            events = read_events(ca, auth(ADMIN))
    finally:
        stop_all(agents)
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
