"""A fleet of real ``krako-agent`` processes against the real control plane, with failures in
the middle of the work (DESIGN.md invariants 1 and 5):

- SIGKILL one agent midway: the units it held come back when their lease runs out
  (``workunit.lease_expired``), run again elsewhere, and every unit completes exactly once;
- SIGKILL the control plane midway and start it again on the same port and database: the
  agents ride it out (their ``--control-plane`` URL stays valid) and finish the work, every
  unit completed exactly once.

Short timings (3 s leases, 0.5 s heartbeats) keep each run to seconds; every wait is a poll
with a generous deadline, so a loaded 2-core machine is slower, not flaky.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, JOIN, ControlPlane, auth

pytestmark = pytest.mark.slow

TIMINGS = {
    "KRAKO_LEASE_S": "3",
    "KRAKO_HEARTBEAT_INTERVAL_S": "0.5",
    "KRAKO_HEARTBEAT_TIMEOUT_S": "2",
    "KRAKO_LEASE_REAPER_INTERVAL_S": "0.2",
}
UNITS = 200
MIDWAY = 50  # completions before the failure is injected
AGENT_IDS = ("fleet-a", "fleet-b", "fleet-c")
FINISH_DEADLINE_S = 120.0


class PinnedPortControlPlane(ControlPlane):
    """A control plane that starts again on the port of its first start, so the agents'
    ``--control-plane`` URL stays valid across a restart."""

    _pinned: int = 0

    @property
    def port(self) -> int:
        return self._pinned

    @port.setter
    def port(self, value: int) -> None:
        if not self._pinned:  # the first free port wins; later starts reuse it
            self._pinned = value


@pytest.fixture
def pinned_control_plane(db_url: str, tmp_path: Path) -> Iterator[PinnedPortControlPlane]:
    cp = PinnedPortControlPlane(db_url, tmp_path, env_overrides=dict(TIMINGS))
    cp.start()
    yield cp
    cp.stop()


@dataclass
class Fleet:
    """Real agent processes (``python -m node_agent``), one log file each."""

    url: str
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, node_id: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KRAKO_", "OPENAI_"))}
        env["PYTHONUNBUFFERED"] = "1"
        state = self.workdir / node_id
        state.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"agent-{node_id}.log").open("wb") as log:
            self.procs[node_id] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "node_agent",
                    "--control-plane",
                    self.url,
                    "--join-token",
                    JOIN,
                    "--node-id",
                    node_id,
                    "--state-dir",
                    str(state),
                    "--kinds",
                    "cpu",
                    "--max-concurrency",
                    "4",
                    "--poll-wait",
                    "1",
                    "--backoff-initial",
                    "0.1",
                    "--backoff-max",
                    "0.5",
                    "--http-timeout",
                    "5",
                    "--poll-timeout-margin",
                    "5",
                    "--grace-period",
                    "5",
                    "--report-grace",
                    "5",
                    "--log-level",
                    "warning",
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def sigkill(self, node_id: str) -> None:
        proc = self.procs[node_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def alive(self) -> set[str]:
        return {n for n, p in self.procs.items() if p.poll() is None}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.workdir.glob("agent-*.log"))
        )


@dataclass
class Log:
    """The admin's view of the event log, read incrementally (``after`` = last seq seen)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    last_seq: int = 0

    def read(self, c: httpx.Client, wait_s: float = 0) -> None:
        """Everything past ``last_seq``; with ``wait_s``, hold until there is something."""
        while True:
            r = c.get(
                "/v1/events",
                params={"after": self.last_seq, "limit": 1000, "wait_s": wait_s},
                headers=auth(ADMIN),
            )
            assert r.status_code == 200, r.text
            page = r.json()
            self.events += page["events"]
            self.last_seq = page["last_seq"]
            if len(page["events"]) < 1000:
                return
            wait_s = 0

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def completed_units(self) -> set[str]:
        return {e["stream_id"] for e in self.of("workunit.completed")}

    def held_by(self) -> Counter[str]:
        """How many claimed attempts each node holds that have not ended yet."""
        ended = {
            (e["stream_id"], e["payload"]["attempt"])
            for e in self.events
            if e["type"] in ("workunit.completed", "workunit.failed", "workunit.lease_expired")
        }
        return Counter(
            e["payload"]["node_id"]
            for e in self.of("workunit.claimed")
            if (e["stream_id"], e["payload"]["attempt"]) not in ended
        )


def _tenant(c: httpx.Client) -> dict[str, str]:
    r = c.post("/v1/tenants", json={"name": "fleet"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return auth(r.json()["api_key"])


def _wait_registered(c: httpx.Client, fleet: Fleet) -> None:
    deadline = time.monotonic() + 30
    pending = set(fleet.procs)
    while pending:
        for node_id in sorted(pending):
            r = c.get(f"/v1/nodes/{node_id}", headers=auth(ADMIN))
            if r.status_code == 200 and r.json()["health"] == "healthy":
                pending.discard(node_id)
        if pending:
            dead = set(fleet.procs) - fleet.alive()
            assert not dead, f"agents {dead} exited:\n{fleet.logs()}"
            assert time.monotonic() < deadline, f"{pending} never registered:\n{fleet.logs()}"
            time.sleep(0.05)


def _submit(c: httpx.Client, tenant: dict[str, str]) -> set[str]:
    unit = {
        "kind": "cpu",
        "execution_session_id": "fleet",
        "payload": {"handler": "sleep", "args": {"ms": 20}},
    }
    r = c.post("/v1/workunits/batch", json={"units": [unit] * UNITS}, headers=tenant)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201] * UNITS
    return {x["work_unit"]["id"] for x in results}


def _wait_for(
    c: httpx.Client, log: Log, done: Callable[[], bool], what: str, diag: Callable[[], str]
) -> None:
    """Tail the log (long-polls, no fixed sleeps) until ``done()``."""
    deadline = time.monotonic() + FINISH_DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {FINISH_DEADLINE_S}s\n{diag()}"
        log.read(c, wait_s=1)


def _assert_exactly_once(log: Log, submitted: set[str]) -> None:
    assert {e["stream_id"] for e in log.of("workunit.submitted")} == submitted
    completed = Counter(e["stream_id"] for e in log.of("workunit.completed"))
    assert set(completed) == submitted, f"never completed: {sorted(submitted - set(completed))}"
    twice = {u: n for u, n in completed.items() if n > 1}
    assert not twice, f"completed more than once: {twice}"
    claims = Counter((e["stream_id"], e["payload"]["attempt"]) for e in log.of("workunit.claimed"))
    assert max(claims.values()) == 1, "an attempt was claimed twice"
    assert not log.of("workunit.failed"), log.of("workunit.failed")
    # each completion is the unit's last claimed attempt, by the node that claimed it
    last_claim = {
        e["stream_id"]: (e["payload"]["attempt"], e["payload"]["node_id"])
        for e in log.of("workunit.claimed")
    }
    for e in log.of("workunit.completed"):
        assert last_claim[e["stream_id"]] == (e["payload"]["attempt"], e["payload"]["node_id"]), e
    seqs = [e["seq"] for e in log.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def _assert_all_completed(c: httpx.Client, tenant: dict[str, str], submitted: set[str]) -> None:
    r = c.get("/v1/workunits", params={"status": "completed", "limit": 1000}, headers=tenant)
    assert r.status_code == 200, r.text
    assert {u["id"] for u in r.json()["items"]} == submitted


def test_a_killed_agent_units_run_again_after_their_lease_and_all_complete_once(
    control_plane: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    cp = control_plane(**TIMINGS)
    fleet = Fleet(cp.url, tmp_path)
    log = Log()
    try:
        with cp.client() as c:
            tenant = _tenant(c)
            for node_id in AGENT_IDS:
                fleet.start(node_id)
            _wait_registered(c, fleet)
            submitted = _submit(c, tenant)

            def diag() -> str:
                return f"{len(log.completed_units())} done\n{fleet.logs()}\n{cp.logs()}"

            _wait_for(c, log, lambda: len(log.completed_units()) >= MIDWAY, "midway", diag)
            # the victim: the agent holding the most claims right now (it always holds some:
            # the queue is far from empty and each agent keeps its 4 slots busy)
            victim = log.held_by().most_common(1)[0][0]
            fleet.sigkill(victim)
            killed_at = time.monotonic()
            done_at_kill = len(log.completed_units())
            assert done_at_kill < UNITS, "the work was over before the agent was killed"

            _wait_for(c, log, lambda: log.completed_units() >= submitted, "all done", diag)
            finished_s = time.monotonic() - killed_at
            assert fleet.alive() == set(AGENT_IDS) - {victim}, fleet.logs()
            fleet.stop()  # any report still in flight lands now, before the final read
            log.read(c)
            _assert_all_completed(c, tenant, submitted)
    finally:
        fleet.stop()

    _assert_exactly_once(log, submitted)
    completed_by = {e["stream_id"]: e["payload"] for e in log.of("workunit.completed")}
    expired = {
        (e["stream_id"], e["payload"]["attempt"]): e["payload"]
        for e in log.of("workunit.lease_expired")
    }
    # what the victim held when it died: its claims that it never completed
    orphans = [
        (e["stream_id"], e["payload"]["attempt"])
        for e in log.of("workunit.claimed")
        if e["payload"]["node_id"] == victim
        and completed_by[e["stream_id"]]["attempt"] != e["payload"]["attempt"]
    ]
    assert orphans, f"{victim} held nothing when it was killed"
    for unit_id, attempt in orphans:
        assert (unit_id, attempt) in expired, f"{unit_id} attempt {attempt}: no lease_expired"
        assert expired[unit_id, attempt]["node_id"] == victim
        done = completed_by[unit_id]
        assert done["attempt"] > attempt and done["node_id"] != victim, (unit_id, done)
    assert finished_s < FINISH_DEADLINE_S


def _heartbeat_after(c: httpx.Client, node_id: str, moment: datetime) -> bool:
    r = c.get(f"/v1/nodes/{node_id}", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    node = r.json()
    beat = node["last_heartbeat_at"]
    return (
        node["health"] == "healthy"
        and beat is not None
        and datetime.fromisoformat(beat.replace("Z", "+00:00")) > moment
    )


def test_agents_ride_out_a_control_plane_restart_and_finish_every_unit_once(
    pinned_control_plane: PinnedPortControlPlane, tmp_path: Path
) -> None:
    cp = pinned_control_plane
    url = cp.url
    fleet = Fleet(url, tmp_path)
    log = Log()

    def diag() -> str:
        return f"{len(log.completed_units())} done\n{fleet.logs()}\n{cp.logs()}"

    try:
        with cp.client() as c:
            tenant = _tenant(c)
            for node_id in AGENT_IDS:
                fleet.start(node_id)
            _wait_registered(c, fleet)
            submitted = _submit(c, tenant)
            _wait_for(c, log, lambda: len(log.completed_units()) >= MIDWAY, "midway", diag)
            cp.kill()  # mid-work: polls, claims and completions are in flight
        # the agents keep retrying against a dead port for a moment, then it comes back
        cp.start()
        assert cp.url == url, "the control plane must come back on the same port"
        restarted = datetime.now(UTC)
        with cp.client() as c:
            log.read(c)  # what the dead process committed, and what came after
            assert len(log.completed_units()) < UNITS, "the work was over before the restart"
            _wait_for(c, log, lambda: log.completed_units() >= submitted, "all done", diag)
            assert fleet.alive() == set(AGENT_IDS), fleet.logs()
            # every agent found its way back: healthy, with a heartbeat to the new process
            deadline = time.monotonic() + 30
            while not all(_heartbeat_after(c, n, restarted) for n in AGENT_IDS):
                assert time.monotonic() < deadline, diag()
                time.sleep(0.1)
            fleet.stop()
            log.read(c)
            _assert_all_completed(c, tenant, submitted)
    finally:
        fleet.stop()

    _assert_exactly_once(log, submitted)
    assert cp.starts == 2
