"""Actuators: what turns the autoscaler's desired node count into machines.

The tick decides and commits (``capacity.scale.requested`` is in the log before anything
happens); the replica that led the tick then calls its actuator, outside the transaction::

    actuator.actuate(desired_nodes, request)   # request: the scale request of this tick, or None

An actuator never raises into the loop: failures are logged and tried again later (the local
actuator reconciles at every tick, the webhook one re-delivers with the next scale request).

- ``log`` (default): a log line per scale request; the events are the whole effect.
- ``local``: starts and stops ``krako-agent`` processes on this machine (node ids
  ``local-<n>``). Scale-down drains a node (no new placements), waits until it holds nothing,
  then sends SIGTERM, so no unit is cut off. Every agent it started is stopped on shutdown.
- ``webhook``: POSTs each scale request as JSON to a URL, signed with HMAC-SHA256
  (``X-Krako-Signature: sha256=<hex>`` over the exact body), with retries and jittered
  exponential backoff, from a worker thread so a slow receiver never delays a tick.
- ``kubernetes``: sets the agent Deployment's replicas through its scale subresource, with
  the pod's ServiceAccount (deploy/k8s/rbac.yaml), the same way (worker thread, retries).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import random
import re
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

# httpx appears only in node_agent/client.py elsewhere (STYLE.md): the webhook actuator is
# the control plane's one outbound HTTP client, so it lives here, behind this module.
import httpx
import orjson
from sqlalchemy import func, select

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, work_units
from control_plane.db.uow import read_connection
from control_plane.errors import NotFound
from control_plane.eventlog.store import us_to_dt
from control_plane.fleet import nodes as node_commands
from control_plane.settings import Settings
from shared.enums import NodeHealth, WorkUnitStatus

__all__ = [
    "ACTUATORS",
    "Actuator",
    "KubernetesActuator",
    "LocalActuator",
    "LogActuator",
    "ScaleAction",
    "WebhookActuator",
    "build_actuator",
    "sign",
]

log = logging.getLogger("krako.autoscaler")


@dataclass(frozen=True, slots=True)
class ScaleAction:
    """A committed ``capacity.scale.requested`` event, as actuators see it."""

    event_id: str
    seq: int
    from_nodes: int
    to_nodes: int
    reason: str
    inputs: dict[str, Any]
    requested_at_us: int

    def body(self) -> dict[str, Any]:
        """The webhook body: the event's payload plus where it sits in the log."""
        return {
            "type": "capacity.scale.requested",
            "event_id": self.event_id,
            "seq": self.seq,
            "requested_at": us_to_dt(self.requested_at_us).isoformat().replace("+00:00", "Z"),
            "from": self.from_nodes,
            "to": self.to_nodes,
            "reason": self.reason,
            "inputs": self.inputs,
        }


class Actuator(Protocol):
    """Turns the desired node count into action; called after each tick this replica led."""

    name: str

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        """``request`` is the scale request that tick appended, if any."""

    def close(self) -> None:
        """Stop what the actuator runs (the app is shutting down)."""


class LogActuator:
    """Only a log line per scale request: the log of events is the whole effect."""

    name = "log"

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        if request is not None:
            log.info(
                "scale requested: %d -> %d nodes (%s) [event %s, seq %d]",
                request.from_nodes,
                request.to_nodes,
                request.reason,
                request.event_id,
                request.seq,
            )

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- webhook


def sign(secret: str, body: bytes) -> str:
    """The ``X-Krako-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class _Delivery:
    """Sends scale requests from a worker thread, so a slow receiver never delays a tick.

    Requests that pile up while one is being sent are coalesced to the newest (it carries the
    target in force). Each is tried ``retries + 1`` times with jittered exponential backoff;
    one that still fails is logged and kept: the next scale request supersedes it, and
    without one it is sent again after ``redeliver_after_s``. Subclasses make one attempt
    (``_attempt``) and say whether it worked, may be retried, or must not be retried.
    """

    name = "delivery"

    def __init__(
        self,
        *,
        retries: int,
        backoff_s: float,
        backoff_max_s: float = 30.0,
        redeliver_after_s: float = 60.0,
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.redeliver_after_s = redeliver_after_s
        self._cv = threading.Condition()
        self._pending: ScaleAction | None = None
        self._failed: tuple[ScaleAction, float] | None = None
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: list[str] = []  # event ids, in delivery order (for operators and tests)
        self.failed_attempts = 0

    def _attempt(self, action: ScaleAction) -> str:
        """One try: ``ok``, ``retry`` (worth trying again) or ``fail`` (pointless to)."""
        raise NotImplementedError

    def _close_client(self) -> None:
        return None

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        with self._cv:
            if request is not None:
                self._pending = request
                self._failed = None
            elif self._failed is not None and self._pending is None:
                action, at = self._failed
                if time.monotonic() - at >= self.redeliver_after_s:
                    self._pending, self._failed = action, None
            if self._pending is None:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"krako-autoscaler-{self.name}", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or being sent; returns whether it got there."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._close_client()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while self._pending is None and not self._stop.is_set():
                    self._cv.wait()
                if self._stop.is_set():
                    return
                action, self._pending = self._pending, None
                self._busy = True
            assert action is not None
            try:
                outcome = self._deliver(action)
            except Exception:  # never let the worker die
                log.exception("%s: sending %s crashed", self.name, action.event_id)
                outcome = "failed"
            with self._cv:
                self._busy = False
                if outcome == "delivered":
                    self.delivered.append(action.event_id)
                elif outcome == "failed" and self._pending is None:
                    self._failed = (action, time.monotonic())
                self._cv.notify_all()

    def _deliver(self, action: ScaleAction) -> str:
        """One request with its retries: ``delivered``, ``failed`` or ``superseded``."""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return "failed"
                with self._cv:
                    if self._pending is not None:  # a newer request carries the target now
                        log.info("%s: %s superseded by a newer request", self.name, action.event_id)
                        return "superseded"
            outcome = self._attempt(action)
            if outcome == "ok":
                log.info(
                    "%s: sent %s (%d -> %d nodes)",
                    self.name,
                    action.event_id,
                    action.from_nodes,
                    action.to_nodes,
                )
                return "delivered"
            self.failed_attempts += 1
            if outcome == "fail":
                return "failed"
        log.error(
            "%s: %s not sent after %d attempts; kept for the next scale request",
            self.name,
            action.event_id,
            self.retries + 1,
        )
        return "failed"


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


class WebhookActuator(_Delivery):
    """POSTs each scale request (``ScaleAction.body()``) to ``url``, signed with HMAC-SHA256
    over the exact body bytes (``X-Krako-Signature: sha256=<hex>``). Receivers can
    de-duplicate on ``event_id`` (also the ``X-Krako-Event-Id`` header): a request may arrive
    more than once. 5xx, 408, 425, 429 and network errors are retried; other 4xx are not.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        redeliver_after_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            retries=retries,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            redeliver_after_s=redeliver_after_s,
        )
        self.url = url
        self.secret = secret
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport)

    def _close_client(self) -> None:
        self._client.close()

    def _attempt(self, action: ScaleAction) -> str:
        body = orjson.dumps(action.body(), option=orjson.OPT_SORT_KEYS)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "krako-autoscaler",
            "X-Krako-Event-Id": action.event_id,
            "X-Krako-Signature": sign(self.secret, body),
        }
        try:
            r = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("webhook %s: %s failed: %s", self.url, action.event_id, exc)
            return "retry"
        if r.is_success:
            return "ok"
        retry = _retryable(r.status_code)
        log.warning(
            "webhook %s answered %d to %s%s",
            self.url,
            r.status_code,
            action.event_id,
            "" if retry else "; not retrying",
        )
        return "retry" if retry else "fail"


# --------------------------------------------------------------------------- kubernetes

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesActuator(_Delivery):
    """Sets ``spec.replicas`` of the agent Deployment through its scale subresource::

        PATCH {api}/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale
        Content-Type: application/merge-patch+json
        {"spec": {"replicas": <to>}}

    with the pod's ServiceAccount token (re-read at every call: bound tokens rotate). The
    Role in ``deploy/k8s/rbac.yaml`` grants exactly this. Kubernetes picks the pods to remove;
    each gets SIGTERM, stops polling and finishes or hands back what it holds within its
    grace period, so a scale-down loses no unit. A 403 means the RBAC is missing.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        deployment: str,
        namespace: str,
        api_url: str,
        token_path: Path = SA_DIR / "token",
        ca_path: Path | None = SA_DIR / "ca.crt",
        timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(retries=retries, backoff_s=backoff_s)
        self.deployment = deployment
        self.namespace = namespace
        self.token_path = token_path
        self.url = (
            f"{api_url.rstrip('/')}/apis/apps/v1/namespaces/{namespace}"
            f"/deployments/{deployment}/scale"
        )
        verify: ssl.SSLContext | bool = True
        if transport is None and ca_path is not None and ca_path.exists():
            verify = ssl.create_default_context(cafile=str(ca_path))
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s), transport=transport, verify=verify
        )

    def _close_client(self) -> None:
        self._client.close()

    def _attempt(self, action: ScaleAction) -> str:
        try:
            token = self.token_path.read_text().strip()
        except OSError as exc:
            log.error("kubernetes: no ServiceAccount token at %s: %s", self.token_path, exc)
            return "fail"
        try:
            r = self._client.patch(
                self.url,
                content=orjson.dumps({"spec": {"replicas": action.to_nodes}}),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/merge-patch+json",
                    "User-Agent": "krako-autoscaler",
                },
            )
        except httpx.HTTPError as exc:
            log.warning("kubernetes: scaling %s failed: %s", self.deployment, exc)
            return "retry"
        if r.is_success:
            return "ok"
        hint = " (is deploy/k8s/rbac.yaml applied?)" if r.status_code in (401, 403) else ""
        log.warning(
            "kubernetes: PATCH %s answered %d%s: %s",
            self.url,
            r.status_code,
            hint,
            r.text[:300],
        )
        return "retry" if _retryable(r.status_code) else "fail"


# --------------------------------------------------------------------------- local processes

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


# --------------------------------------------------------------------------- choosing one

ACTUATORS = ("log", "local", "webhook", "kubernetes")


def build_actuator(settings: Settings, db: Database) -> Actuator:
    """The actuator ``KRAKO_AUTOSCALER_ACTUATOR`` names; a ValueError explains a bad setup."""
    kind = settings.autoscaler_actuator.strip().lower()
    if kind == "log":
        return LogActuator()
    if kind == "webhook":
        if not settings.autoscaler_webhook_url:
            raise ValueError("KRAKO_AUTOSCALER_ACTUATOR=webhook needs KRAKO_AUTOSCALER_WEBHOOK_URL")
        if not settings.autoscaler_webhook_secret:
            raise ValueError(
                "KRAKO_AUTOSCALER_ACTUATOR=webhook needs KRAKO_AUTOSCALER_WEBHOOK_SECRET "
                "(requests are always signed)"
            )
        return WebhookActuator(
            settings.autoscaler_webhook_url,
            settings.autoscaler_webhook_secret,
            timeout_s=settings.autoscaler_webhook_timeout_s,
            retries=settings.autoscaler_webhook_retries,
            backoff_s=settings.autoscaler_webhook_backoff_s,
        )
    if kind == "kubernetes":
        return KubernetesActuator(
            deployment=settings.autoscaler_k8s_deployment,
            namespace=settings.autoscaler_k8s_namespace or _sa_namespace(),
            api_url=settings.autoscaler_k8s_api_url or _in_cluster_api_url(),
            timeout_s=settings.autoscaler_webhook_timeout_s,
            retries=settings.autoscaler_webhook_retries,
            backoff_s=settings.autoscaler_webhook_backoff_s,
        )
    if kind == "local":
        if not settings.node_join_token:
            raise ValueError("KRAKO_AUTOSCALER_ACTUATOR=local needs KRAKO_NODE_JOIN_TOKEN")
        return LocalActuator(
            db,
            control_plane_url=settings.autoscaler_local_control_plane_url,
            join_token=settings.node_join_token,
            state_dir=(settings.data_dir / "autoscaler-agents").resolve(),
            extra_args=shlex.split(settings.autoscaler_local_agent_args),
            min_nodes=settings.autoscaler_min_nodes,
            max_nodes=settings.autoscaler_max_nodes,
            stop_timeout_s=settings.autoscaler_local_stop_timeout_s,
        )
    raise ValueError(
        f"KRAKO_AUTOSCALER_ACTUATOR={settings.autoscaler_actuator!r}: expected one of "
        f"{', '.join(ACTUATORS)}"
    )


def _sa_namespace() -> str:
    try:
        return (SA_DIR / "namespace").read_text().strip()
    except OSError:
        raise ValueError(
            "KRAKO_AUTOSCALER_ACTUATOR=kubernetes outside a pod needs "
            "KRAKO_AUTOSCALER_K8S_NAMESPACE (and KRAKO_AUTOSCALER_K8S_API_URL)"
        ) from None


def _in_cluster_api_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ValueError(
            "KRAKO_AUTOSCALER_ACTUATOR=kubernetes outside a pod needs KRAKO_AUTOSCALER_K8S_API_URL"
        )
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"https://{host}:{port}"
