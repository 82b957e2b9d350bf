#!/usr/bin/env python
"""Krako end to end, on one machine: a control plane, agent(s), a burst of work, the bill.

The demo starts a control plane (``python -m control_plane.server``) on the embedded default,
SQLite in a demo-only data directory (``$KRAKO_DATA_DIR/demo``, default ``./.krako/demo``, so
it never touches a user's database), and one or two agents (``python -m node_agent``). It
submits a burst of work units as a fresh tenant, waits for the agents to run out of polls and
for every unit to be terminal, then prints what happened, all of it read back over the public
API: the event timeline, each placement and why, the claims (and a lost claim race with
``--multi-agent``), LLM telemetry, the ledger, the wallet, capacity changes and the replay
check.

It is only an HTTP client: it imports nothing from the project, so what it shows is what any
client sees. Exit code 0 when every unit reached a terminal state and the replay is
identical; 1 otherwise; 2 when a process could not be started; 130 on Ctrl-C. Processes it
started are stopped on every exit path; their logs stay under ``<data dir>/logs``.

    python scripts/e2e_demo.py --reset --burst 3 --polls 6
    python scripts/e2e_demo.py --reset --kind llm_pod --polls 2 --llm-provider stub
    python scripts/e2e_demo.py --reset --burst 1 --polls 2 --multi-agent
    python scripts/e2e_demo.py --reset --simulate-pressure auto --burst 3 --polls 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
TERMINAL = frozenset({"completed", "failed", "cancelled"})
BILLABLE = frozenset({"workunit.completed", "llm.invocation.completed"})
CAPACITY_EVENTS = ("capacity.scale.requested", "capacity.admission.mode.changed")
# Child variables the demo passes through from the caller's environment (LLM credentials and
# model choice); every other KRAKO_* is set by the demo itself so runs are reproducible.
PASS_THROUGH = ("KRAKO_OPENAI_", "KRAKO_LLM_MODEL", "KRAKO_LLM_PRICES", "OPENAI_")
PRESSURE_UNITS_TOTAL = 6  # with no capacity yet, >= 4 queued units per slot is "backlog"
PRESSURE_SECOND_WAVE = 14  # 20 queued: past the CRITICAL threshold (16 per slot)
PRESSURE_SLEEP_MS = 300
# Autoscaler timings for the pressure scenario: a mode holds 1 s (30 s in production), so
# the ramp OPEN -> THROTTLED -> CRITICAL and back fits in a few seconds.
PRESSURE_ENV = {
    "KRAKO_AUTOSCALER_MIN_HOLD_S": "1",
    "KRAKO_AUTOSCALER_IDLE_HOLD_S": "1",
    "KRAKO_AUTOSCALER_SCALE_UP_COOLDOWN_S": "1",
    "KRAKO_AUTOSCALER_SCALE_DOWN_WINDOW_S": "3",
}
KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')

Json = dict[str, Any]


class DemoError(Exception):
    """The demo cannot go on (a process died, the control plane refused a request, ...)."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    reset: bool
    burst: int
    polls: int
    kind: str
    llm_provider: str
    multi_agent: bool
    simulate_pressure: str
    poll_wait: float
    data_dir: Path
    plain: bool

    @property
    def agent_count(self) -> int:
        return 2 if self.multi_agent else 1

    @property
    def pressure(self) -> bool:
        return self.simulate_pressure == "auto"


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="e2e_demo.py",
        description="Run Krako end to end on this machine (control plane + agents) and print "
        "what happened: events, placements, claims, LLM telemetry, ledger, wallet, capacity, "
        "replay check.",
    )
    parser.add_argument("--reset", action="store_true", help="delete the demo data dir first")
    parser.add_argument("--burst", type=int, default=3, help="work units to submit (default 3)")
    parser.add_argument(
        "--polls", type=int, default=6, help="each agent exits after N polls once idle (default 6)"
    )
    parser.add_argument("--kind", choices=("cpu", "llm_pod"), default="cpu", help="unit kind")
    parser.add_argument(
        "--llm-provider", choices=("stub", "openai"), default="stub", help="agent LLM provider"
    )
    parser.add_argument(
        "--multi-agent",
        action="store_true",
        help="two agents, every unit offered to both (fan-out 2): one claims, one skips",
    )
    parser.add_argument(
        "--simulate-pressure",
        choices=("auto", "off"),
        default="off",
        help="auto: queue more work than there is capacity and show the autoscaler's reaction",
    )
    parser.add_argument(
        "--poll-wait",
        type=float,
        default=None,
        help="agent long-poll hold in seconds (default 1, or 3 with --multi-agent)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="demo data dir (default $KRAKO_DATA_DIR/demo, else ./.krako/demo)",
    )
    parser.add_argument("--plain", action="store_true", help="plain text, no rich formatting")
    args = parser.parse_args(argv)
    if args.burst < 1:
        parser.error("--burst must be at least 1")
    if args.polls < 1:
        parser.error("--polls must be at least 1")
    poll_wait = (
        args.poll_wait
        if args.poll_wait is not None
        else (3.0 if args.multi_agent or args.simulate_pressure == "auto" else 1.0)
    )
    if not 0 <= poll_wait <= 30:
        parser.error("--poll-wait must be within 0-30 seconds")
    data_dir = args.data_dir or Path(os.environ.get("KRAKO_DATA_DIR") or ".krako") / "demo"
    return Options(
        reset=args.reset,
        burst=args.burst,
        polls=args.polls,
        kind=args.kind,
        llm_provider=args.llm_provider,
        multi_agent=args.multi_agent,
        simulate_pressure=args.simulate_pressure,
        poll_wait=poll_wait,
        data_dir=data_dir.resolve(),
        plain=args.plain,
    )


# --------------------------------------------------------------------------- output


class Output(Protocol):
    def heading(self, text: str) -> None: ...
    def line(self, text: str = "") -> None: ...
    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None: ...


class PlainOutput:
    """Aligned plain text (no dependency, and what ``--plain`` or a missing rich gives)."""

    def heading(self, text: str) -> None:
        print(f"\n== {text} ==", flush=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [len(c) for c in columns]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        print(fmt.format(*columns).rstrip())
        print(fmt.format(*("-" * w for w in widths)).rstrip())
        for row in rows:
            print(fmt.format(*row).rstrip())
        sys.stdout.flush()


class RichOutput:
    """The same, drawn by rich."""

    def __init__(self) -> None:
        from rich.console import Console

        width = None if sys.stdout.isatty() else 160
        self._console = Console(highlight=False, width=width, soft_wrap=False)

    def heading(self, text: str) -> None:
        from rich.rule import Rule

        self._console.print()
        self._console.print(Rule(f"[bold]{text}[/bold]", align="left"))

    def line(self, text: str = "") -> None:
        from rich.markup import escape

        self._console.print(escape(text), soft_wrap=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self._console.print(table)


def make_output(plain: bool) -> Output:
    if not plain:
        try:
            return RichOutput()
        except ImportError:
            pass
    return PlainOutput()


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


@dataclass
class Fleet:
    """The processes the demo started; ``stop_all`` ends them (agents first)."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.log_dir,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout_s: float = 10.0) -> None:
        if not proc.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait(timeout=5)

    def stop_all(self) -> None:
        """SIGTERM the agents, then the control plane; a Ctrl-C meanwhile kills the rest."""
        agents = [p for p in self.procs if p.name.startswith("agent")]
        others = [p for p in self.procs if not p.name.startswith("agent")]
        try:
            for proc in agents + others:
                self.stop(proc)
        except KeyboardInterrupt:
            for proc in self.procs:
                if proc.alive():
                    with contextlib.suppress(ProcessLookupError):
                        proc.popen.kill()
                    proc.popen.wait(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its KRAKO_* settings (except LLM ones), plus
    ``extra``; the project is importable even when it is not installed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KRAKO_") or k.startswith(PASS_THROUGH)
    }
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def why(self) -> str:
        if isinstance(self.body, dict):
            code = self.body.get("code")
            detail = self.body.get("detail") or self.body.get("title")
            return f"HTTP {self.status}" + (f" {code}" if code else "") + f": {detail}"
        return f"HTTP {self.status}: {self.text[:200]}"


class Api:
    """The few calls the demo makes, as admin or as the demo tenant."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base_url = base_url
        self.admin_token = admin_token
        self.tenant_key: str | None = None
        self._http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(45.0))

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        as_admin: bool = False,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        token = self.admin_token if as_admin else self.tenant_key
        all_headers = {"Authorization": f"Bearer {token}"} if token else {}
        all_headers.update(headers or {})
        response = self._http.request(
            method, path, json=json_body, params=params, headers=all_headers
        )
        body: Any = None
        if response.content:
            with contextlib.suppress(ValueError):
                body = response.json()
        return Reply(response.status_code, body, response.text, response.headers.get("retry-after"))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


# --------------------------------------------------------------------------- the run


@dataclass
class Collected:
    """Everything the report shows, read back from the API and the agents' logs."""

    tenant_id: str = ""
    start_seq: int = 0  # events up to here are from earlier runs (no --reset)
    unit_ids: list[str] = field(default_factory=list)
    units: dict[str, Json] = field(default_factory=dict)
    events: list[Json] = field(default_factory=list)
    ledger: list[Json] | None = None
    ledger_error: str | None = None
    wallet: Json | None = None
    wallet_error: str | None = None
    capacity: Json | None = None
    capacity_error: str | None = None
    replay: Json | None = None
    replay_error: str | None = None
    agent_lines: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    agent_exit: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def unit_payload(kind: str, i: int) -> Json:
    if kind == "llm_pod":
        return {
            "prompt": f"Demo prompt #{i}: explain event sourcing in one sentence.",
            "max_tokens": 48,
        }
    return {"handler": "sha256", "args": {"data": f"krako-demo-{i}", "rounds": 100_000}}


class Demo:
    def __init__(self, opts: Options, out: Output) -> None:
        self.opts = opts
        self.out = out
        self.log_dir = opts.data_dir / "logs"
        self._mode_after = 0
        self.fleet = Fleet(self.log_dir)
        self.admin_token = "ka_" + secrets.token_urlsafe(24)
        self.join_token = "kj_" + secrets.token_urlsafe(24)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api = Api(self.base_url, self.admin_token)
        self.session_id = f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.data = Collected()
        self.started = time.monotonic()

    # ---------------------------------------------------------------- steps

    def prepare_dir(self) -> None:
        if self.opts.reset and self.opts.data_dir.exists():
            shutil.rmtree(self.opts.data_dir)
            self.out.line(f"reset: deleted {self.opts.data_dir}")
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def start_control_plane(self) -> Proc:
        db_url = f"sqlite:///{self.opts.data_dir / 'krako.db'}"
        env = child_env(
            {
                "KRAKO_DATA_DIR": str(self.opts.data_dir),
                "KRAKO_DATABASE_URL": db_url,
                "KRAKO_ADMIN_TOKEN": self.admin_token,
                "KRAKO_NODE_JOIN_TOKEN": self.join_token,
                "KRAKO_DEV": "0",
                "KRAKO_HEARTBEAT_INTERVAL_S": "1",
                "KRAKO_HEARTBEAT_TIMEOUT_S": "5",
                "KRAKO_LEASE_S": "10",
                "KRAKO_LEASE_REAPER_INTERVAL_S": "0.5",
                "KRAKO_AUTOSCALER_INTERVAL_S": "0.5",
                "KRAKO_SCHEDULER_OFFER_FANOUT": "2" if self.opts.multi_agent else "1",
                **(PRESSURE_ENV if self.opts.pressure else {}),
            }
        )
        proc = self.fleet.start(
            "control-plane",
            ["-m", "control_plane.server", "--port", str(self.port)],
            env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not proc.alive():
                raise DemoError(f"the control plane exited with code {proc.popen.returncode}")
            if self.api.ready():
                self.data.timings["control plane ready"] = time.monotonic() - self.started
                return proc
            time.sleep(0.1)
        raise DemoError("the control plane was not ready (GET /readyz) within 30 s")

    def create_tenant(self) -> None:
        reply = self.api.call(
            "POST", "/v1/tenants", as_admin=True, json_body={"name": self.session_id}
        )
        if not reply.ok:
            raise DemoError(f"POST /v1/tenants: {reply.why()}")
        self.data.tenant_id = reply.body["tenant_id"]
        self.api.tenant_key = reply.body["api_key"]

    def submit(self) -> None:
        units: list[tuple[str, Json, str]] = [
            (self.opts.kind, unit_payload(self.opts.kind, i), f"burst-{i}")
            for i in range(self.opts.burst)
        ]
        if self.opts.pressure:
            for i in range(max(0, PRESSURE_UNITS_TOTAL - self.opts.burst)):
                payload = {"handler": "sleep", "args": {"ms": PRESSURE_SLEEP_MS}}
                units.append(("cpu", payload, f"pressure-{i}"))
        self._submit_all(units)
        self.data.timings["submitted"] = time.monotonic() - self.started

    def _submit_one(self, kind: str, payload: Json, key: str, priority: str = "p1") -> Reply:
        body = {
            "kind": kind,
            "execution_session_id": self.session_id,
            "priority": priority,
            "payload": payload,
        }
        return self.api.call(
            "POST",
            "/v1/workunits",
            json_body=body,
            headers={"Idempotency-Key": f"{self.session_id}-{key}"},
        )

    def _submit_all(self, units: Sequence[tuple[str, Json, str]]) -> None:
        for kind, payload, key in units:
            reply = self._submit_one(kind, payload, key)
            if reply.status == 429:
                self.data.notes.append(
                    f"unit {key} refused by admission ({reply.why()}); not retried"
                )
                continue
            if not reply.ok:
                raise DemoError(f"POST /v1/workunits: {reply.why()}")
            self.data.unit_ids.append(reply.body["id"])

    def ramp_pressure(self) -> None:
        """With no capacity yet: the first wave takes the mode to THROTTLED, a second wave to
        CRITICAL, where a p1 submission is refused (429) and a p0 one admitted. The agent
        started afterwards drains it all, and the mode comes back down to OPEN."""
        if not self.wait_for_mode("THROTTLED"):
            return
        sleep = {"handler": "sleep", "args": {"ms": PRESSURE_SLEEP_MS}}
        self._submit_all([("cpu", sleep, f"wave2-{i}") for i in range(PRESSURE_SECOND_WAVE)])
        if not self.wait_for_mode("CRITICAL"):
            return
        refused = self._submit_one("cpu", sleep, "critical-p1")
        retry = f" (Retry-After {refused.retry_after} s)" if refused.retry_after else ""
        self.data.notes.append(f"pressure: in CRITICAL a p1 submission got {refused.status}{retry}")
        if refused.ok:
            self.data.unit_ids.append(refused.body["id"])
        admitted = self._submit_one("cpu", sleep, "critical-p0", priority="p0")
        self.data.notes.append(f"pressure: in CRITICAL a p0 submission got {admitted.status}")
        if admitted.ok:
            self.data.unit_ids.append(admitted.body["id"])

    def wait_for_mode(self, mode: str, timeout_s: float = 8.0) -> bool:
        """Tail the log until the autoscaler switches the admission mode to ``mode``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            wait = max(0.0, min(1.0, deadline - time.monotonic()))
            reply = self.api.call(
                "GET",
                "/v1/events",
                as_admin=True,
                params={
                    "after": self._mode_after,
                    "wait_s": wait,
                    "type": "capacity.admission.mode.changed",
                },
            )
            if not reply.ok:
                self.data.notes.append(f"GET /v1/events while waiting: {reply.why()}")
                return False
            self._mode_after = reply.body["last_seq"]
            if any(e["payload"].get("to") == mode for e in reply.body["events"]):
                return True
        self.data.notes.append(
            f"pressure: the mode did not reach {mode} within {timeout_s:g} s "
            "(is the autoscaler running?)"
        )
        return False

    def agent_args(self, node_id: str) -> list[str]:
        args = [
            "-m",
            "node_agent",
            "--control-plane",
            self.base_url,
            "--join-token",
            self.join_token,
            "--node-id",
            node_id,
            "--polls",
            str(self.opts.polls),
            "--poll-wait",
            str(self.opts.poll_wait),
            "--llm-provider",
            self.opts.llm_provider,
            "--kinds",
            "cpu,llm_pod",
            "--max-concurrency",
            str(self.max_concurrency),
            "--grace-period",
            "5",
            "--report-grace",
            "3",
        ]
        if self.opts.multi_agent:
            # poll for offers, then claim each: both agents see a fanned-out offer and race
            args += ["--claim-mode", "explicit"]
        return args

    @property
    def max_concurrency(self) -> int:
        """4 slots, or more when the burst would not fit in the polls otherwise (each poll
        claims at most the free slots; the last poll is the idle one that ends the agent)."""
        units = self.opts.burst + (
            PRESSURE_UNITS_TOTAL + PRESSURE_SECOND_WAVE + 2 if self.opts.pressure else 0
        )
        if self.opts.pressure:
            # every poll that finds work counts: one poll should be able to take the backlog
            return max(4, min(64, units))
        return max(4, min(64, math.ceil(units / max(1, self.opts.polls - 1))))

    def start_agents(self) -> list[Proc]:
        env = child_env({})
        return [
            self.fleet.start(f"agent-{n}", self.agent_args(f"agent-{n}"), env)
            for n in range(1, self.opts.agent_count + 1)
        ]

    def wait_registered(self, agents: Sequence[Proc]) -> None:
        want = {p.name for p in agents}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for proc in agents:
                if not proc.alive():
                    raise DemoError(f"{proc.name} exited with code {proc.popen.returncode}")
            reply = self.api.call("GET", "/v1/nodes", as_admin=True)
            if reply.ok and want <= {n["node_id"] for n in reply.body.get("items", [])}:
                self.data.timings["agents registered"] = time.monotonic() - self.started
                return
            time.sleep(0.1)
        raise DemoError(f"agents {sorted(want)} did not register within 30 s")

    def wait_agents(self, agents: Sequence[Proc]) -> None:
        budget = self.opts.polls * (self.opts.poll_wait + 2.0) + 20.0
        deadline = time.monotonic() + budget
        for proc in agents:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.data.notes.append(
                    f"{proc.name} had not exited after {budget:.0f} s; stopped with SIGTERM"
                )
                self.fleet.stop(proc)
            self.data.agent_exit[proc.name] = proc.popen.returncode
        self.data.timings["agents exited"] = time.monotonic() - self.started

    def wait_terminal(self) -> None:
        """Units are normally terminal once the agents are gone; allow a little slack for the
        last reports (20 s), or none when no agent ended cleanly (nothing will run them)."""
        clean = any(code == 0 for code in self.data.agent_exit.values())
        deadline = time.monotonic() + (20 if clean else 1)
        for unit_id in self.data.unit_ids:
            while True:
                wait = max(0.0, min(10.0, deadline - time.monotonic()))
                reply = self.api.call("GET", f"/v1/workunits/{unit_id}", params={"wait_s": wait})
                if not reply.ok:
                    raise DemoError(f"GET /v1/workunits/{unit_id}: {reply.why()}")
                self.data.units[unit_id] = reply.body
                if reply.body["status"] in TERMINAL or time.monotonic() >= deadline:
                    break

    def collect(self) -> None:
        d = self.data
        d.events = self._all_events(d.start_seq)
        self._wait_billing()
        d.ledger, d.ledger_error = self._ledger()
        wallet = self.api.call("GET", f"/v1/billing/wallets/{d.tenant_id}")
        d.wallet, d.wallet_error = (wallet.body, None) if wallet.ok else (None, wallet.why())
        capacity = self.api.call("GET", "/v1/capacity", as_admin=True)
        d.capacity, d.capacity_error = (
            (capacity.body, None) if capacity.ok else (None, capacity.why())
        )
        replay = self.api.call("POST", "/v1/billing/replay", as_admin=True)
        d.replay, d.replay_error = (replay.body, None) if replay.ok else (None, replay.why())
        for proc in self.fleet.procs:
            if proc.name.startswith("agent"):
                d.agent_lines[proc.name] = parse_agent_log(proc.log_path)

    def _all_events(self, after: int = 0) -> list[Json]:
        events: list[Json] = []
        while True:
            reply = self.api.call(
                "GET", "/v1/events", as_admin=True, params={"after": after, "limit": 1000}
            )
            if not reply.ok:
                raise DemoError(f"GET /v1/events: {reply.why()}")
            page = reply.body["events"]
            if not page:
                return events
            events.extend(page)
            after = reply.body["last_seq"]

    def _wait_billing(self) -> None:
        """Billing folds the log asynchronously: wait until the wallet covers our last
        billable event (or give up after 10 s and say so)."""
        mine = [
            e["seq"]
            for e in self.data.events
            if e["type"] in BILLABLE and e.get("tenant_id") == self.data.tenant_id
        ]
        if not mine:
            return
        target = max(mine)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = self.api.call("GET", f"/v1/billing/wallets/{self.data.tenant_id}")
            if not reply.ok:
                return  # reported by collect()
            if int(reply.body.get("as_of_seq") or 0) >= target:
                return
            time.sleep(0.2)
        self.data.notes.append(f"billing had not folded seq {target} after 10 s")

    def _ledger(self) -> tuple[list[Json] | None, str | None]:
        entries: list[Json] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            reply = self.api.call("GET", "/v1/billing/ledger", params=params)
            if not reply.ok:
                return None, reply.why()
            entries.extend(reply.body.get("entries", []))
            cursor = reply.body.get("next_cursor")
            if not cursor:
                return entries, None

    # ---------------------------------------------------------------- orchestration

    def run(self) -> int:
        opts = self.opts
        self.prepare_dir()
        self.out.heading("Krako end-to-end demo")
        self.out.line(
            f"data dir {opts.data_dir} (SQLite), logs in {self.log_dir}; control plane "
            f"{self.base_url}; kind {opts.kind}, burst {opts.burst}, {opts.agent_count} "
            f"agent(s) x {opts.polls} polls of {opts.poll_wait:g} s, llm provider "
            f"{opts.llm_provider}, pressure {opts.simulate_pressure}"
            + (", fan-out 2, explicit claims" if opts.multi_agent else "")
        )
        self.start_control_plane()
        earlier = self._all_events()
        # A fresh log holds only the control plane's seeding (prices, billing policy), which
        # belongs to this run; anything with a tenant in it is an earlier run's.
        if any(e["type"] == "tenant.created" for e in earlier):
            self.data.start_seq = earlier[-1]["seq"]
            self.data.notes.append(
                f"the log already held {len(earlier)} events of earlier runs (seq <= "
                f"{self.data.start_seq}); the timeline shows this run's only (--reset for a "
                "clean log); the replay check covers the whole log"
            )
        self.create_tenant()
        if opts.multi_agent:
            # Both nodes must exist when the units are placed, so that each is offered to both.
            agents = self.start_agents()
            self.wait_registered(agents)
            time.sleep(0.3)  # let both agents' first long-poll start
            self.submit()
        else:
            # Units first: the agent claims them on its first poll, so few polls suffice.
            self.submit()
            if opts.pressure:
                self.ramp_pressure()
            agents = self.start_agents()
        self.wait_agents(agents)
        self.wait_terminal()
        self.collect()
        self.data.timings["collected"] = time.monotonic() - self.started
        return Report(self.out, self.opts, self.data, self.log_dir).render()

    def show_failure_logs(self) -> None:
        for proc in self.fleet.procs:
            state = "running" if proc.alive() else exit_text(proc.popen.returncode)
            self.out.heading(f"{proc.name} log tail ({state}): {proc.log_path}")
            for text in proc.tail():
                self.out.line(text)

    def close(self) -> None:
        self.fleet.stop_all()
        self.api.close()


def parse_agent_log(path: Path) -> list[dict[str, str]]:
    """The agent's ``key=value`` log lines as dicts (other lines are skipped)."""
    lines: list[dict[str, str]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return lines
    for raw in text.splitlines():
        fields = {}
        for key, value in KV.findall(raw):
            if value.startswith('"'):
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            fields[key] = value
        if "event" in fields:
            lines.append(fields)
    return lines


# --------------------------------------------------------------------------- report


def exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def short_time(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return stamp


def summarize_result(result: Any) -> str:
    """A short, readable form of a unit's result."""
    if result is None:
        return ""
    if isinstance(result, dict):
        if "digest" in result:
            return f"sha256 {str(result['digest'])[:16]}..."
        if "text" in result:
            text = " ".join(str(result["text"]).split())
            return f"{result.get('model', '?')}: {text[:40]!r}"
        return ", ".join(f"{k}={str(v)[:20]}" for k, v in result.items())[:70]
    return str(result)[:70]


def event_details(e: Json) -> str:
    p: Json = e.get("payload") or {}
    kind = e["type"]
    if kind == "workunit.submitted":
        args = p.get("payload") or {}
        what = args.get("handler") or ("prompt" if "prompt" in args else "messages")
        return f"kind={p.get('kind')} priority={p.get('priority')} {what}"
    if kind == "workunit.scheduled":
        offered = ",".join(p.get("offered_to") or [])
        return f"node={p.get('node_id')} offered_to={offered} attempt={p.get('attempt')}"
    if kind == "workunit.claimed":
        return f"node={p.get('node_id')} attempt={p.get('attempt')}"
    if kind == "workunit.completed":
        return f"node={p.get('node_id')} cpu_ms={p.get('cpu_ms')}"
    if kind == "llm.invocation.completed":
        return (
            f"model={p.get('model')} tokens={p.get('total_tokens')} "
            f"latency_ms={p.get('latency_ms')}"
        )
    if kind == "workunit.failed":
        return f"retryable={p.get('retryable')} requeued={p.get('requeued')}"
    if kind == "workunit.leases.renewed":
        return f"node={p.get('node_id')} units={len(p.get('work_unit_ids') or [])}"
    if kind == "node.registered":
        kinds = ",".join(p.get("supported_kinds") or [])
        return f"kinds={kinds} max_concurrency={p.get('max_concurrency')}"
    if kind in ("node.health.changed", "trust.score.changed"):
        return f"{p.get('from')} -> {p.get('to')} ({p.get('reason')})"
    if kind in CAPACITY_EVENTS:
        return f"{p.get('from')} -> {p.get('to')}: {p.get('reason')}"
    if kind == "billing.policy.changed":
        return f"usd_per_cpu_s={p.get('usd_per_cpu_s')} price_version={p.get('price_version')}"
    if kind == "tenant.created":
        return f"name={p.get('name')}"
    return ", ".join(f"{k}={v}" for k, v in p.items() if not isinstance(v, dict | list))[:100]


class Report:
    def __init__(self, out: Output, opts: Options, data: Collected, log_dir: Path) -> None:
        self.out = out
        self.opts = opts
        self.d = data
        self.log_dir = log_dir
        self.problems: list[str] = []
        self.short: dict[str, str] = {u: f"u{i + 1}" for i, u in enumerate(data.unit_ids)}

    def unit(self, unit_id: str | None) -> str:
        if unit_id is None:
            return "-"
        return f"{self.short[unit_id]}:{unit_id}" if unit_id in self.short else unit_id

    def render(self) -> int:
        self.units()
        self.timeline()
        self.placements()
        self.claims()
        self.llm()
        self.ledger()
        self.wallet()
        self.capacity()
        self.replay()
        return self.verdict()

    def units(self) -> None:
        self.out.heading(f"Work units ({len(self.d.unit_ids)}) of tenant {self.d.tenant_id}")
        rows = []
        for unit_id in self.d.unit_ids:
            u = self.d.units.get(unit_id, {})
            shown = summarize_result(u.get("result"))
            if u.get("error"):
                shown = f"error: {json.dumps(u['error'])[:70]}"
            rows.append(
                [
                    self.short[unit_id],
                    unit_id,
                    str(u.get("kind", "?")),
                    str(u.get("status", "?")),
                    str(u.get("attempt", "?")),
                    str(u.get("node_id") or "-"),
                    shown,
                ]
            )
            if u.get("status") not in TERMINAL:
                self.problems.append(f"unit {unit_id} is {u.get('status')}, not terminal")
        self.out.table(["#", "unit", "kind", "status", "attempt", "node", "result"], rows)
        for note in self.d.notes:
            self.out.line(f"note: {note}")

    def timeline(self) -> None:
        events = self.d.events
        self.out.heading(f"Event timeline ({len(events)} events)")
        rows = [
            [
                str(e["seq"]),
                short_time(e["recorded_at"]),
                e["type"],
                self.unit(e["stream_id"]) if e["stream_id"] in self.short else e["stream_id"],
                event_details(e),
            ]
            for e in events
        ]
        self.out.table(["seq", "time", "type", "unit/node", "details"], rows)

    def placements(self) -> None:
        scheduled = [e for e in self.d.events if e["type"] == "workunit.scheduled"]
        self.out.heading(f"Placements ({len(scheduled)})")
        if not scheduled:
            self.out.line("no placements")
        for e in scheduled:
            p = e["payload"]
            decision: Json = p.get("decision") or {}
            offered = ", ".join(p.get("offered_to") or [])
            self.out.line(
                f"seq {e['seq']} {self.unit(e['stream_id'])} -> {p.get('node_id')} "
                f"(offered to {offered}; rule: {decision.get('rule', '?')})"
            )
            for c in decision.get("candidates") or []:
                comps = ", ".join(f"{k}={v}" for k, v in (c.get("components") or {}).items())
                self.out.line(
                    f"    candidate {c.get('node_id')}: score {c.get('score')} "
                    f"free_slots {c.get('free_slots')} ({comps})"
                )
            excluded = decision.get("excluded") or []
            for x in excluded:
                self.out.line(f"    excluded {x.get('node_id')}: {x.get('reason')}")
            if not excluded:
                self.out.line("    excluded: none")

    def claims(self) -> None:
        claimed = [e for e in self.d.events if e["type"] == "workunit.claimed"]
        placed = {
            (e["stream_id"], e["payload"].get("attempt")): e["payload"]
            for e in self.d.events
            if e["type"] == "workunit.scheduled"
        }
        self.out.heading(f"Claims ({len(claimed)})")
        rows = []
        for e in claimed:
            p = e["payload"]
            offer = placed.get((e["stream_id"], p.get("attempt")), {})
            rows.append(
                [
                    str(e["seq"]),
                    self.unit(e["stream_id"]),
                    str(p.get("attempt")),
                    str(offer.get("node_id", "?")),
                    ",".join(offer.get("offered_to") or []) or "?",
                    str(p.get("node_id")),
                    short_time(str(p.get("lease_expires_at", ""))),
                ]
            )
        self.out.table(
            ["seq", "unit", "attempt", "placed on", "offered to", "claimed by", "lease until"],
            rows,
        )
        skipped = 0
        for agent, lines in self.d.agent_lines.items():
            for f in lines:
                if f["event"] == "skipped":
                    skipped += 1
                    self.out.line(
                        f"race: {agent} skipped {self.unit(f.get('unit'))} "
                        f"(reason={f.get('reason')}): another agent claimed it first"
                    )
            stopped = next((f for f in reversed(lines) if f["event"] == "stopped"), None)
            summary = (
                ", ".join(
                    f"{k}={stopped[k]}"
                    for k in ("polls", "claimed", "completed", "failed", "skipped")
                    if k in stopped
                )
                if stopped
                else "no 'stopped' line"
            )
            code = self.d.agent_exit.get(agent)
            self.out.line(f"agent {agent}: {exit_text(code)}; {summary}")
            if code != 0:
                self.problems.append(f"{agent} ended with {exit_text(code)} (see its log)")
        if self.opts.multi_agent and skipped == 0:
            self.out.line(
                "race: no agent logged a skipped claim (both were offered every unit, but "
                "the loser did not see the offer before the winner claimed it)"
            )

    def llm(self) -> None:
        invocations = [e for e in self.d.events if e["type"] == "llm.invocation.completed"]
        if not invocations and self.opts.kind != "llm_pod":
            return
        self.out.heading(f"LLM telemetry ({len(invocations)} invocations)")
        billed = {x.get("source_event_id"): x for x in self.d.ledger or []}
        rows = []
        for e in invocations:
            p = e["payload"]
            line = billed.get(e["event_id"])
            rows.append(
                [
                    self.unit(e["stream_id"]),
                    f"{p.get('provider')}/{p.get('model')}",
                    f"{p.get('tokens_in')}+{p.get('tokens_out')}={p.get('total_tokens')}",
                    str(p.get("latency_ms")),
                    str(p.get("estimated_cost_usd")),
                    str(line["amount_usd"]) if line else "(no ledger line)",
                    "platform cost (stale claim)" if p.get("stale_claim") else "billed",
                ]
            )
        self.out.table(
            [
                "unit",
                "provider/model",
                "tokens in+out",
                "latency ms",
                "agent estimate $",
                "billed $",
                "to",
            ],
            rows,
        )

    def ledger(self) -> None:
        self.out.heading("Ledger")
        if self.d.ledger is None:
            self.out.line(f"ledger: unavailable (GET /v1/billing/ledger: {self.d.ledger_error})")
            self.problems.append("ledger unavailable")
            return
        rows = [
            [
                str(x.get("source_seq")),
                str(x.get("line_item_type")),
                self.unit(x.get("work_unit_id")),
                f"{x.get('quantity')} {x.get('unit')}",
                f"v{(x.get('pricing') or {}).get('price_version', '?')}",
                str(x.get("amount_usd")),
            ]
            for x in self.d.ledger
        ]
        self.out.table(["source seq", "line item", "unit", "quantity", "price", "amount $"], rows)
        self.out.line(f"ledger: {len(self.d.ledger)} lines")
        completed = sum(1 for u in self.d.units.values() if u.get("status") == "completed")
        cpu_lines = sum(1 for x in self.d.ledger if x.get("line_item_type") == "workunit_cpu")
        if cpu_lines != completed:
            self.problems.append(f"{completed} completed units but {cpu_lines} workunit_cpu lines")

    def wallet(self) -> None:
        self.out.heading("Wallet")
        w = self.d.wallet
        if w is None:
            self.out.line(f"wallet: unavailable ({self.d.wallet_error})")
            self.problems.append("wallet unavailable")
            return
        totals = w.get("totals") or {}
        parts = ", ".join(f"{k} {v}" for k, v in totals.items())
        self.out.line(
            f"wallet {w.get('tenant_id')}: total {w.get('total_usd')} USD ({parts}); "
            f"as of seq {w.get('as_of_seq')}"
        )

    def capacity(self) -> None:
        self.out.heading("Capacity")
        changes = [e for e in self.d.events if e["type"] in CAPACITY_EVENTS]
        if not changes:
            self.out.line("no capacity changes (no capacity.* events in the log)")
        for e in changes:
            p = e["payload"]
            source = f" [{p['source']}]" if p.get("source") else ""
            self.out.line(
                f"seq {e['seq']} {e['type']}{source}: {p.get('from')} -> {p.get('to')}: "
                f"{p.get('reason')}"
            )
            inputs = p.get("inputs") or {}
            keys = ("queued", "running", "total_slots", "utilization", "backlog_per_slot")
            shown = ", ".join(f"{k}={inputs[k]}" for k in keys if k in inputs)
            if shown:
                self.out.line(f"    inputs: {shown}")
        c = self.d.capacity
        if c is None:
            self.out.line(f"GET /v1/capacity: unavailable ({self.d.capacity_error})")
            return
        depth = {k: v for k, v in (c.get("queue_depth") or {}).items() if v}
        self.out.line(
            f"now: mode {c.get('mode')}, desired_nodes {c.get('desired_nodes')}, healthy_nodes "
            f"{c.get('healthy_nodes')}, running {c.get('running')}, utilization "
            f"{c.get('utilization')}, queued {depth or 0}"
        )

    def replay(self) -> None:
        self.out.heading("Replay check")
        r = self.d.replay
        if r is None:
            self.out.line(f"replay: unavailable (POST /v1/billing/replay: {self.d.replay_error})")
            self.problems.append("replay unavailable")
            return
        detail = (
            f"{r.get('events_replayed')} events replayed, {r.get('ledger_entries')} ledger "
            f"entries, digest {str(r.get('live_digest'))[:16]}"
        )
        if r.get("identical"):
            self.out.line(f"replay: identical ({detail})")
        else:
            self.out.line(
                f"replay: DIFFERENT (live {r.get('live_digest')} vs replay "
                f"{r.get('replay_digest')}; {detail})"
            )
            self.problems.append("replay is not identical")

    def verdict(self) -> int:
        self.out.heading("Result")
        timings = ", ".join(f"{k} at {v:.1f}s" for k, v in self.d.timings.items())
        self.out.line(f"timings: {timings}")
        self.out.line(f"logs: {self.log_dir}")
        terminal = sum(1 for u in self.d.units.values() if u.get("status") in TERMINAL)
        self.out.line(f"units terminal: {terminal}/{len(self.d.unit_ids)}")
        if self.problems:
            for problem in self.problems:
                self.out.line(f"problem: {problem}")
            self.out.line("RESULT: FAIL")
            return 1
        self.out.line("RESULT: OK")
        return 0


# --------------------------------------------------------------------------- main


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    out = make_output(opts.plain)
    demo = Demo(opts, out)
    code = 1
    with sigterm_as_interrupt():
        try:
            code = demo.run()
        except KeyboardInterrupt:
            out.line("interrupted: stopping the processes")
            code = 130
        except DemoError as exc:
            out.heading("Demo failed")
            out.line(f"error: {exc}")
            code = 2
        except Exception as exc:  # a bug or an unexpected reply: still stop and show logs
            out.heading("Demo failed")
            out.line(f"error: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            demo.close()
        if code not in (0, 130):
            demo.show_failure_logs()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
