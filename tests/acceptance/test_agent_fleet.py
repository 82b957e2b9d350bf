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

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, StartControlPlane, auth
from tests.support.events import EventTail
from tests.support.processes import AgentProcess, ControlPlaneProcess, stop_all
from tests.support.waiting import wait_until

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
AGENT_FLAGS = (
    "--kinds", "cpu", "--max-concurrency", "4", "--poll-wait", "1",
    "--backoff-initial", "0.1", "--backoff-max", "0.5",
    "--http-timeout", "5", "--poll-timeout-margin", "5",
    "--grace-period", "5", "--report-grace", "5", "--log-level", "warning",
)  # fmt: skip


@dataclass
class Fleet:
    """Real agent processes (``python -m node_agent``) of one control plane, a log each."""

    cp: ControlPlaneProcess
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def start(self, node_id: str) -> None:
        agent = self.cp.agent(node_id, *AGENT_FLAGS, node_id=node_id)
        self.agents[node_id] = agent.start()

    def alive(self) -> set[str]:
        return {n for n, a in self.agents.items() if a.running}

    def stop(self) -> None:
        stop_all(self.agents.values(), timeout=20)

    def logs(self) -> str:
        return "\n".join(a.logs(3000) for _, a in sorted(self.agents.items()))


def completed_units(log: EventTail) -> set[str]:
    return {e["stream_id"] for e in log.of("workunit.completed")}


def held_by(log: EventTail) -> Counter[str]:
    """How many claimed attempts each node holds that have not ended yet."""
    ended = {
        (e["stream_id"], e["payload"]["attempt"])
        for e in log.of("workunit.completed", "workunit.failed", "workunit.lease_expired")
    }
    return Counter(
        e["payload"]["node_id"]
        for e in log.of("workunit.claimed")
        if (e["stream_id"], e["payload"]["attempt"]) not in ended
    )


def _tenant(c: httpx.Client) -> dict[str, str]:
    r = c.post("/v1/tenants", json={"name": "fleet"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return auth(r.json()["api_key"])


def _wait_registered(c: httpx.Client, fleet: Fleet) -> None:
    pending = set(fleet.agents)

    def all_healthy() -> bool:
        for node_id in sorted(pending):
            r = c.get(f"/v1/nodes/{node_id}", headers=auth(ADMIN))
            if r.status_code == 200 and r.json()["health"] == "healthy":
                pending.discard(node_id)
        for agent in fleet.agents.values():
            agent.check_running()
        return not pending

    wait_until("every agent registered and healthy", all_healthy, context=fleet.logs)


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


def _wait_for(log: EventTail, done: Callable[[], bool], what: str, diag: Callable[[], str]) -> None:
    """Tail the log (long-polls, no fixed sleeps) until ``done()``."""

    def tailed() -> bool:
        if done():
            return True
        log.read(wait_s=1)
        return done()

    wait_until(what, tailed, FINISH_DEADLINE_S, interval=0, context=diag)


def _assert_exactly_once(log: EventTail, submitted: set[str]) -> None:
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
    control_plane: StartControlPlane,
) -> None:
    cp = control_plane(**TIMINGS)
    fleet = Fleet(cp)
    try:
        with cp.client() as c:
            log = EventTail(c, auth(ADMIN))
            tenant = _tenant(c)
            for node_id in AGENT_IDS:
                fleet.start(node_id)
            _wait_registered(c, fleet)
            submitted = _submit(c, tenant)

            def diag() -> str:
                return f"{len(completed_units(log))} done\n{fleet.logs()}\n{cp.logs()}"

            _wait_for(log, lambda: len(completed_units(log)) >= MIDWAY, "midway", diag)
            # the victim: the agent holding the most claims right now (it always holds some:
            # the queue is far from empty and each agent keeps its 4 slots busy)
            victim = held_by(log).most_common(1)[0][0]
            fleet.agents[victim].kill()
            done_at_kill = len(completed_units(log))
            assert done_at_kill < UNITS, "the work was over before the agent was killed"

            _wait_for(log, lambda: completed_units(log) >= submitted, "all done", diag)
            assert fleet.alive() == set(AGENT_IDS) - {victim}, fleet.logs()
            fleet.stop()  # any report still in flight lands now, before the final read
            log.read()
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
    control_plane: StartControlPlane,
) -> None:
    cp = control_plane(**TIMINGS)
    url = cp.url
    fleet = Fleet(cp)
    try:
        with cp.client() as c:
            log = EventTail(c, auth(ADMIN))

            def diag() -> str:
                return f"{len(completed_units(log))} done\n{fleet.logs()}\n{cp.logs()}"

            tenant = _tenant(c)
            for node_id in AGENT_IDS:
                fleet.start(node_id)
            _wait_registered(c, fleet)
            submitted = _submit(c, tenant)
            _wait_for(log, lambda: len(completed_units(log)) >= MIDWAY, "midway", diag)
            cp.kill()  # mid-work: polls, claims and completions are in flight
        # the agents keep retrying against a dead port for a moment, then it comes back
        cp.start()
        assert cp.url == url, "the control plane must come back on the same port"
        restarted = datetime.now(UTC)
        with cp.client() as c:
            log.client = c
            log.read()  # what the dead process committed, and what came after
            assert len(completed_units(log)) < UNITS, "the work was over before the restart"
            _wait_for(log, lambda: completed_units(log) >= submitted, "all done", diag)
            assert fleet.alive() == set(AGENT_IDS), fleet.logs()
            # every agent found its way back: healthy, with a heartbeat to the new process
            wait_until(
                "a heartbeat of every agent to the new process",
                lambda: all(_heartbeat_after(c, n, restarted) for n in AGENT_IDS),
                interval=0.1,
                context=diag,
            )
            fleet.stop()
            log.read()
            _assert_all_completed(c, tenant, submitted)
    finally:
        fleet.stop()

    _assert_exactly_once(log, submitted)
    assert cp.starts == 2
