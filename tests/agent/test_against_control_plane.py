"""The agent as a real process against the real control plane (a real process on SQLite):
the contract end to end, a cancel that revokes a running unit, and a control-plane restart."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.events import TERMINAL, unit_events, wait_for_event
from tests.support.processes import AgentProcess, ControlPlaneProcess, bearer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

ADMIN = "admin-token-for-agent-tests-0123"
JOIN = "join-token-for-agent-tests-01234"
TIMINGS = {
    "KRAKO_HEARTBEAT_INTERVAL_S": "0.3",
    "KRAKO_LEASE_S": "10",
    "KRAKO_LEASE_REAPER_INTERVAL_S": "0.5",
}


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """The control plane on SQLite under its data dir: a restart keeps its port and data."""
    cp = ControlPlaneProcess(workdir=tmp_path, admin_token=ADMIN, join_token=JOIN, env=TIMINGS)
    with cp.start():
        yield cp


def tenant(cp: ControlPlaneProcess) -> dict[str, str]:
    with cp.admin() as c:
        r = c.post("/v1/tenants", json={"name": "acme"})
    assert r.status_code == 201, r.text
    return bearer(r.json()["api_key"])


def submit(
    cp: ControlPlaneProcess,
    headers: dict[str, str],
    kind: str,
    payload: dict[str, Any],
    **extra: Any,
) -> str:
    body = {"kind": kind, "execution_session_id": "s1", "payload": payload, **extra}
    r = httpx.post(f"{cp.url}/v1/workunits", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_terminal(cp: ControlPlaneProcess, headers: dict[str, str], unit_id: str) -> dict[str, Any]:
    with cp.client() as c:
        wait_for_event(c, headers, *TERMINAL, stream_id=unit_id)
        r = c.get(f"/v1/workunits/{unit_id}", headers=headers)
    assert r.status_code == 200, r.text
    unit: dict[str, Any] = r.json()
    return unit


def events_of(cp: ControlPlaneProcess, unit_id: str) -> list[str]:
    with cp.client() as c:
        return [e["type"] for e in unit_events(c, bearer(ADMIN), unit_id)]


def spawn_agent(cp: ControlPlaneProcess) -> AgentProcess:
    flags = ("--poll-wait", "1", "--log-format", "json")
    backoff = ("--backoff-initial", "0.05", "--backoff-max", "0.5")
    return cp.agent("agent", *flags, *backoff).start()


def finish(agent: AgentProcess) -> list[dict[str, Any]]:
    """SIGTERM (if still running); the agent must exit 0. Its JSON log lines."""
    code = agent.stop(timeout=30)
    assert code == 0, agent.logs()
    return agent.json_lines()


def logged(agent: AgentProcess, event: str, **fields: Any) -> bool:
    """Whether the agent has logged ``event`` (with those fields) yet."""
    return any(
        line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        for line in agent.json_lines()
    )


def test_units_run_end_to_end_through_the_real_api(
    control_plane: ControlPlaneProcess,
) -> None:
    cp = control_plane
    headers = tenant(cp)
    sha = submit(cp, headers, "cpu", {"handler": "sha256", "args": {"data": "hello", "rounds": 3}})
    llm = submit(cp, headers, "llm_pod", {"prompt": "hello there world", "max_tokens": 8})
    bad = submit(cp, headers, "cpu", {"handler": "nope"})
    agent = spawn_agent(cp)
    try:
        done = {u: wait_terminal(cp, headers, u) for u in (sha, llm, bad)}
    finally:
        logs = finish(agent)
    digest = hashlib.sha256(b"hello").digest()
    for _ in range(2):
        digest = hashlib.sha256(digest).digest()
    assert done[sha]["status"] == "completed"
    assert done[sha]["result"] == {"digest": digest.hex()}
    assert done[llm]["status"] == "completed"
    assert done[llm]["result"]["usage"]["tokens_in"] == 3
    assert done[llm]["result"]["usage"]["tokens_out"] <= 8
    assert done[bad]["status"] == "failed" and done[bad]["attempt"] == 1  # not retried
    assert done[bad]["error"]["code"] == "unknown_handler"
    assert events_of(cp, llm)[-2:] == ["llm.invocation.completed", "workunit.completed"]
    assert {"registered", "claimed", "completed", "failed", "stopped"} <= {
        line["event"] for line in logs
    }


def test_cancelled_running_unit_is_revoked_and_not_reported(
    control_plane: ControlPlaneProcess,
) -> None:
    cp = control_plane
    headers = tenant(cp)
    slow = submit(cp, headers, "cpu", {"handler": "sleep", "args": {"ms": 20_000}})
    agent = spawn_agent(cp)
    try:
        with cp.client() as c:
            wait_for_event(c, bearer(ADMIN), "workunit.claimed", stream_id=slow)
        r = httpx.post(f"{cp.url}/v1/workunits/{slow}/cancel", headers=headers)
        assert r.status_code == 200, r.text
        # its next heartbeat tells the agent the unit is revoked
        wait_until(
            "the agent stopping the revoked unit",
            lambda: logged(agent, "revoked", unit=slow),
            context=agent.logs,
        )
    finally:
        logs = finish(agent)
    assert [line["unit"] for line in logs if line["event"] == "revoked"] == [slow]
    unit_events = events_of(cp, slow)
    assert "workunit.completed" not in unit_events and "workunit.failed" not in unit_events
    assert not [line for line in logs if line["event"] in ("completed", "failed", "report_dropped")]


def test_agent_rides_out_a_control_plane_restart(
    control_plane: ControlPlaneProcess,
) -> None:
    cp = control_plane
    headers = tenant(cp)
    first = submit(cp, headers, "cpu", {"handler": "noop"})
    agent = spawn_agent(cp)
    try:
        assert wait_terminal(cp, headers, first)["status"] == "completed"
        cp.kill()
        # the agent polls and heartbeats into a dead port, and keeps trying
        wait_until(
            "the agent waiting for the control plane",
            lambda: logged(agent, "waiting_for_control_plane"),
            context=agent.logs,
        )
        agent.check_running()
        cp.start()
        second = submit(cp, headers, "cpu", {"handler": "noop"})
        assert wait_terminal(cp, headers, second)["status"] == "completed"
    finally:
        logs = finish(agent)
    events = [line["event"] for line in logs]
    assert "waiting_for_control_plane" in events and "control_plane_back" in events
