"""The agent as a real process against the real control plane (a real process on SQLite):
the contract end to end, a cancel that revokes a running unit, and a control-plane restart."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.test_openai_server import free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

ADMIN = "admin-token-for-agent-tests-0123"
JOIN = "join-token-for-agent-tests-01234"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRAKO_", "OPENAI_"))}
    env.update(extra)
    return env


class ControlPlane:
    """``python -m control_plane.server`` on a fixed port and data dir (so it can restart)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = clean_env(
            KRAKO_ADMIN_TOKEN=ADMIN,
            KRAKO_NODE_JOIN_TOKEN=JOIN,
            KRAKO_DATA_DIR=str(workdir / "cp-data"),
            KRAKO_HEARTBEAT_INTERVAL_S="0.3",
            KRAKO_LEASE_S="10",
            KRAKO_LEASE_REAPER_INTERVAL_S="0.5",
        )

    def start(self) -> None:
        log = open(self.workdir / "cp.log", "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control_plane.server",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.workdir / "cp.log").read_text())
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def tenant(cp: ControlPlane) -> dict[str, str]:
    r = httpx.post(
        f"{cp.url}/v1/tenants", json={"name": "acme"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['api_key']}"}


def submit(
    cp: ControlPlane, headers: dict[str, str], kind: str, payload: dict[str, Any], **extra: Any
) -> str:
    body = {"kind": kind, "execution_session_id": "s1", "payload": payload, **extra}
    r = httpx.post(f"{cp.url}/v1/workunits", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_terminal(
    cp: ControlPlane, headers: dict[str, str], unit_id: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(
                f"{cp.url}/v1/workunits/{unit_id}",
                params={"wait_s": 2},
                headers=headers,
                timeout=10,
            )
            unit: dict[str, Any] = r.json()
            if unit["status"] in ("completed", "failed", "cancelled"):
                return unit
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{unit_id} not terminal"
        time.sleep(0.05)


def events_of(cp: ControlPlane, unit_id: str) -> list[str]:
    r = httpx.get(
        f"{cp.url}/v1/workunits/{unit_id}/events", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    return [e["type"] for e in r.json()["events"]]


def spawn_agent(cp: ControlPlane, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node_agent",
            "--control-plane",
            cp.url,
            "--join-token",
            JOIN,
            "--state-dir",
            str(tmp_path / "agent"),
            "--poll-wait",
            "1",
            "--log-format",
            "json",
            "--backoff-initial",
            "0.05",
            "--backoff-max",
            "0.5",
            *extra,
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]


def test_units_run_end_to_end_through_the_real_api(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    headers = tenant(cp)
    sha = submit(cp, headers, "cpu", {"handler": "sha256", "args": {"data": "hello", "rounds": 3}})
    llm = submit(cp, headers, "llm_pod", {"prompt": "hello there world", "max_tokens": 8})
    bad = submit(cp, headers, "cpu", {"handler": "nope"})
    agent = spawn_agent(cp, tmp_path)
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
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    headers = tenant(cp)
    slow = submit(cp, headers, "cpu", {"handler": "sleep", "args": {"ms": 20_000}})
    agent = spawn_agent(cp, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while "workunit.claimed" not in events_of(cp, slow):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.post(f"{cp.url}/v1/workunits/{slow}/cancel", headers=headers)
        assert r.status_code == 200, r.text
        time.sleep(1.5)  # a few heartbeats: the agent learns it is revoked
    finally:
        logs = finish(agent)
    assert [line["unit"] for line in logs if line["event"] == "revoked"] == [slow]
    unit_events = events_of(cp, slow)
    assert "workunit.completed" not in unit_events and "workunit.failed" not in unit_events
    assert not [line for line in logs if line["event"] in ("completed", "failed", "report_dropped")]


def test_agent_rides_out_a_control_plane_restart(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    headers = tenant(cp)
    first = submit(cp, headers, "cpu", {"handler": "noop"})
    agent = spawn_agent(cp, tmp_path)
    try:
        assert wait_terminal(cp, headers, first)["status"] == "completed"
        cp.kill()
        time.sleep(1.0)  # the agent polls and heartbeats into a dead port
        assert agent.poll() is None
        cp.start()
        second = submit(cp, headers, "cpu", {"handler": "noop"})
        assert wait_terminal(cp, headers, second)["status"] == "completed"
    finally:
        logs = finish(agent)
    events = [line["event"] for line in logs]
    assert "waiting_for_control_plane" in events and "control_plane_back" in events
