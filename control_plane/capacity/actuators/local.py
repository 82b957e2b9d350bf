"""The ``local`` actuator: ``krako-agent`` processes started and stopped on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy import func, select

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, work_units
from control_plane.db.uow import read_connection
from control_plane.errors import NotFound
from control_plane.fleet import nodes as node_commands
from control_plane.settings import Settings, SettingsError
from shared.enums import NodeHealth, WorkUnitStatus

if TYPE_CHECKING:
    from control_plane.capacity.actuators import ScaleAction

log = logging.getLogger("krako.autoscaler")

LOCAL_PREFIX = "local-"
_LOCAL_ID = re.compile(r"^local-(\d+)$")
_QUICK_EXIT_S = 5.0
# the control plane's secrets stay out of its agents' environment (and the node id is ours)
_NOT_FOR_AGENTS = frozenset(
    {
        "KRAKO_ADMIN_TOKEN",
        "KRAKO_DATABASE_URL",
        "KRAKO_AUTOSCALER_WEBHOOK_SECRET",
        "KRAKO_NODE_ID",
        "KRAKO_AGENT_STATE_DIR",
    }
)


@dataclass
class _Agent:
    """One agent process this actuator started (or found still running from a previous run)."""

    node_id: str
    pid: int
    proc: subprocess.Popen[bytes] | None  # None: adopted, not our child
    started_at: float
    state: str = "running"  # running | draining | stopping
    log_file: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _pid_alive(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.proc is not None:
                self.proc.send_signal(sig)
            else:
                os.kill(self.pid, sig)

    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None


class LocalActuator:
    """Starts and stops ``krako-agent`` processes on this machine to meet the desired count.

    ``desired_nodes`` is the size of the whole fleet: healthy nodes it did not start count
    towards it, so this actuator runs ``desired - others`` agents, within
    ``[0, max_nodes]``. It reconciles at every tick it is called (an agent that died is
    replaced, with a backoff when agents keep dying young).

    Scale-down never cuts a unit off: the agent's node is drained first (no new placements;
    the sweep withdraws offers it has not claimed), and only once it holds no scheduled or
    claimed unit does it get SIGTERM (an agent finishes what it holds on SIGTERM anyway).
    Node ids are ``local-<n>``, never reused after a drain (a drained node stays drained),
    and each agent keeps its pid and log under ``state_dir/local-<n>/``, so a restarted
    control plane finds the agents a previous run left alive and manages them again.
    """

    name = "local"

    def __init__(
        self,
        db: Database,
        *,
        control_plane_url: str,
        join_token: str,
        state_dir: Path,
        extra_args: list[str] | None = None,
        min_nodes: int = 0,
        max_nodes: int = 10,
        stop_timeout_s: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        self.db = db
        self.control_plane_url = control_plane_url
        self.join_token = join_token
        self.state_dir = state_dir
        self.extra_args = list(extra_args or [])
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.stop_timeout_s = stop_timeout_s
        self.python = python
        self.agents: dict[str, _Agent] = {}
        self._lock = threading.Lock()
        self._quick_exits = 0
        self._next_start_at = 0.0
        self._closed = False
        self._adopt()

    # -- reconcile

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._reap()
            target = self._own_target(desired_nodes)
            running = sorted((a for a in self.agents.values() if a.state == "running"), key=_order)
            if request is not None or len(running) != target:
                log.info(
                    "local actuator: desired %d nodes, running %d own agents, target %d",
                    desired_nodes,
                    len(running),
                    target,
                )
            if len(running) < target:
                for _ in range(target - len(running)):
                    if not self._start():
                        break
            elif len(running) > target:
                for agent in reversed(running[target:]):
                    self._drain(agent)
            for agent in [a for a in self.agents.values() if a.state == "draining"]:
                if self._holds_nothing(agent.node_id):
                    log.info("local actuator: %s drained and idle; SIGTERM", agent.node_id)
                    agent.signal(signal.SIGTERM)
                    agent.state = "stopping"

    def _own_target(self, desired: int) -> int:
        mine = set(self.agents)
        with read_connection(self.db) as conn:
            others = int(
                conn.execute(
                    select(func.count()).where(
                        nodes.c.health == NodeHealth.HEALTHY.value,
                        nodes.c.drained.is_(False),
                        nodes.c.quarantined.is_(False),
                        nodes.c.node_id.notin_(sorted(mine)) if mine else nodes.c.node_id != "",
                    )
                ).scalar_one()
            )
        want = min(self.max_nodes, max(self.min_nodes, desired))
        return min(self.max_nodes, max(0, want - others))

    def _holds_nothing(self, node_id: str) -> bool:
        with read_connection(self.db) as conn:
            busy = conn.execute(
                select(func.count()).where(
                    work_units.c.node_id == node_id,
                    work_units.c.status.in_(
                        [WorkUnitStatus.SCHEDULED.value, WorkUnitStatus.CLAIMED.value]
                    ),
                )
            ).scalar_one()
        return int(busy) == 0

    def _drain(self, agent: _Agent) -> None:
        try:
            node_commands.drain(self.db, agent.node_id)
        except NotFound:
            pass  # not registered yet: it holds nothing, stop it below
        agent.state = "draining"
        log.info("local actuator: draining %s", agent.node_id)

    def _reap(self) -> None:
        for node_id, agent in list(self.agents.items()):
            if agent.alive():
                continue
            del self.agents[node_id]
            if agent.log_file is not None:
                agent.log_file.close()
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / node_id / "agent.pid").unlink()
            if agent.state == "stopping":
                log.info("local actuator: %s stopped (exit %s)", node_id, agent.exit_code())
                continue
            lived = time.monotonic() - agent.started_at
            log.warning(
                "local actuator: agent %s exited unexpectedly (exit %s after %.1fs); see %s",
                node_id,
                agent.exit_code(),
                lived,
                self.state_dir / node_id / "agent.log",
            )
            if lived < _QUICK_EXIT_S:
                self._quick_exits += 1
                self._next_start_at = time.monotonic() + min(60.0, 2.0**self._quick_exits)
            else:
                self._quick_exits = 0

    # -- processes

    def _next_node_id(self) -> str:
        used = {int(m.group(1)) for n in self.agents if (m := _LOCAL_ID.match(n))}
        with read_connection(self.db) as conn:
            for (node_id,) in conn.execute(
                select(nodes.c.node_id).where(nodes.c.node_id.like(f"{LOCAL_PREFIX}%"))
            ):
                m = _LOCAL_ID.match(node_id)
                if m:
                    used.add(int(m.group(1)))
        if self.state_dir.is_dir():
            for d in self.state_dir.iterdir():
                m = _LOCAL_ID.match(d.name)
                if m and (d / "agent.pid").exists():
                    used.add(int(m.group(1)))
        # Ids of nodes that are gone and were never drained could be reused, but a drained
        # node stays drained when it registers again, so ids only go up.
        return f"{LOCAL_PREFIX}{max(used, default=0) + 1}"

    def command(self, node_id: str) -> list[str]:
        """The agent's command line (the join token goes through the environment, so it
        stays out of the process list)."""
        return [
            self.python,
            "-m",
            "node_agent",
            "--control-plane",
            self.control_plane_url,
            "--node-id",
            node_id,
            "--state-dir",
            str(self.state_dir / node_id),
            *self.extra_args,
        ]

    def _start(self) -> bool:
        if time.monotonic() < self._next_start_at:
            return False
        node_id = self._next_node_id()
        home = self.state_dir / node_id
        try:
            home.mkdir(parents=True, exist_ok=True)
            log_file = (home / "agent.log").open("ab")
            env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_AGENTS}
            env["KRAKO_NODE_JOIN_TOKEN"] = self.join_token
            proc = subprocess.Popen(
                self.command(node_id),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the control plane, which stops us
            )
        except OSError:
            log.exception("local actuator: could not start agent %s", node_id)
            self._next_start_at = time.monotonic() + 5.0
            return False
        (home / "agent.pid").write_text(str(proc.pid))
        self.agents[node_id] = _Agent(node_id, proc.pid, proc, time.monotonic(), log_file=log_file)
        log.info("local actuator: started agent %s (pid %d)", node_id, proc.pid)
        return True

    def _adopt(self) -> None:
        """Manage the agents a previous run of this control plane left running."""
        if not self.state_dir.is_dir():
            return
        for home in sorted(self.state_dir.iterdir()):
            if not _LOCAL_ID.match(home.name):
                continue
            pid_file = home / "agent.pid"
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if _is_agent(pid, home.name):
                self.agents[home.name] = _Agent(home.name, pid, None, time.monotonic())
                log.info("local actuator: found agent %s still running (pid %d)", home.name, pid)
            else:
                with contextlib.suppress(OSError):
                    pid_file.unlink()

    def close(self) -> None:
        """SIGTERM every agent (each finishes what it holds), wait, then SIGKILL stragglers."""
        with self._lock:
            self._closed = True
            agents = list(self.agents.values())
            for agent in agents:
                agent.signal(signal.SIGTERM)
                agent.state = "stopping"
            deadline = time.monotonic() + self.stop_timeout_s
            while any(a.alive() for a in agents) and time.monotonic() < deadline:
                time.sleep(0.05)
            for agent in agents:
                if agent.alive():
                    log.warning("local actuator: %s did not stop in time; SIGKILL", agent.node_id)
                    agent.signal(signal.SIGKILL)
                    if agent.proc is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            agent.proc.wait(timeout=5.0)
            self._reap()


def _order(agent: _Agent) -> tuple[int, str]:
    m = _LOCAL_ID.match(agent.node_id)
    return (int(m.group(1)) if m else 0, agent.node_id)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process that nobody reaped yet does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_agent(pid: int, node_id: str) -> bool:
    """Whether ``pid`` is alive and is the agent of ``node_id`` (guards against pid reuse)."""
    try:
        os.kill(pid, 0)  # also refuses another user's process: not one we could stop
    except OSError:
        return False
    if not _pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True  # no procfs: trust the pid file
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"node_agent" in b" ".join(args) and node_id.encode() in args


def from_settings(settings: Settings, db: Database) -> LocalActuator:
    """``KRAKO_AUTOSCALER_ACTUATOR=local``: needs the join token its agents register with;
    keeps them under ``KRAKO_DATA_DIR/autoscaler-agents``."""
    join_token = settings.api.node_join_token
    if not join_token:
        raise SettingsError("KRAKO_AUTOSCALER_ACTUATOR=local needs KRAKO_NODE_JOIN_TOKEN")
    autoscaler = settings.autoscaler
    return LocalActuator(
        db,
        control_plane_url=autoscaler.local.control_plane_url,
        join_token=join_token,
        state_dir=(settings.database.data_dir / "autoscaler-agents").resolve(),
        extra_args=shlex.split(autoscaler.local.agent_args),
        min_nodes=autoscaler.min_nodes,
        max_nodes=autoscaler.max_nodes,
        stop_timeout_s=autoscaler.local.stop_timeout_s,
    )
