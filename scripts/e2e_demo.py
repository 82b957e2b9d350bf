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

It is a client like any other: it talks to the control plane over HTTP only, through the
``krako`` CLI's client (``krako_cli.client``, ``krako_cli.follow``) and puts events into words
with the CLI's renderers, so what it shows is what any client sees. Exit code 0 when every
unit reached a terminal state and the replay is identical; 1 otherwise; 2 when a process
could not be started or the control plane refused a step; 130 on Ctrl-C. Processes it started
are stopped on every exit path; their logs stay under ``<data dir>/logs``.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent

# the demo, its control plane and its agents all run this checkout, installed or not
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from krako_cli.client import Api, CliError, ProblemError, Runtime  # noqa: E402
from krako_cli.follow import Tail, events_after, wait_for_unit  # noqa: E402
from krako_cli.render.capacity import queue_text  # noqa: E402
from krako_cli.render.events import summarize  # noqa: E402
from krako_cli.render.placements import Placement  # noqa: E402
from krako_cli.render.text import clock  # noqa: E402
from shared.enums import CapacityMode, LineItemType, WorkUnitStatus  # noqa: E402
from shared.events import (  # noqa: E402
    CapacityAdmissionModeChanged,
    CapacityScaleRequested,
    Event,
    EventType,
    LlmInvocationCompleted,
    Payload,
    WorkUnitClaimed,
)
from shared.money import format_usd  # noqa: E402
from shared.wire import CapacityReport, LedgerEntry, ReplayReport, Wallet, WorkUnit  # noqa: E402

BILLABLE = frozenset({EventType.WORKUNIT_COMPLETED, EventType.LLM_INVOCATION_COMPLETED})
CAPACITY_EVENTS = frozenset(
    {EventType.CAPACITY_SCALE_REQUESTED, EventType.CAPACITY_ADMISSION_MODE_CHANGED}
)
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
T = TypeVar("T")
P = TypeVar("P", bound=Payload)


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
    """Aligned plain text (what ``--plain`` gives)."""

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
        width = None if sys.stdout.isatty() else 160
        self._console = Console(highlight=False, width=width, soft_wrap=False)

    def heading(self, text: str) -> None:
        self._console.print()
        self._console.print(Rule(f"[bold]{escape(text)}[/bold]", align="left"))

    def line(self, text: str = "") -> None:
        self._console.print(escape(text), soft_wrap=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        self._console.print(table)


def make_output(plain: bool) -> Output:
    return PlainOutput() if plain else RichOutput()


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


# --------------------------------------------------------------------------- the API


def why(exc: CliError) -> str:
    """The first line of the client's message (title, code, detail), for a one-line note."""
    return exc.message.splitlines()[0]


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """A refused or failed request inside ends the demo with a DemoError naming ``what``."""
    try:
        yield
    except CliError as exc:
        raise DemoError(f"{what}: {why(exc)}") from exc


def attempt(read: Callable[[], T]) -> tuple[T | None, str | None]:
    """``read()``, or None and why it failed: for the sections a report can do without."""
    try:
        return read(), None
    except CliError as exc:
        return None, why(exc)


def payload_of(event: Event, model: type[P]) -> P:
    """The event's payload as its typed model."""
    return model.model_validate(event.payload)


def ready(api: Api) -> bool:
    """Whether GET /readyz says the control plane is up, migrated and reaches its database."""
    try:
        api.send("GET", "/readyz", read_timeout=2.0)
    except CliError:
        return False
    return True


def long_polls_waiting(api: Api) -> int:
    """How many long-polls the control plane holds now (``krako_waiters`` in /metrics)."""
    for line in api.send("GET", "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name == "krako_waiters":
            return int(float(value))
    return 0


@dataclass(frozen=True)
class Submitted:
    """What one submission got: the HTTP status, and the unit or the refusal."""

    status: int
    unit: WorkUnit | None = None
    refusal: ProblemError | None = None


# --------------------------------------------------------------------------- the run


@dataclass
class Collected:
    """Everything the report shows, read back from the API and the agents' logs."""

    tenant_id: str = ""
    start_seq: int = 0  # events up to here are from earlier runs (no --reset)
    unit_ids: list[str] = field(default_factory=list)
    units: dict[str, WorkUnit] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    ledger: list[LedgerEntry] | None = None
    ledger_error: str | None = None
    wallet: Wallet | None = None
    wallet_error: str | None = None
    capacity: CapacityReport | None = None
    capacity_error: str | None = None
    replay: ReplayReport | None = None
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
        self.admin = Api(Runtime(url=self.base_url, token=self.admin_token))
        self._tenant: Api | None = None
        self.session_id = f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.data = Collected()
        self.started = time.monotonic()

    @property
    def tenant(self) -> Api:
        """The API as the demo's tenant (once it exists)."""
        if self._tenant is None:
            raise DemoError("no tenant yet")
        return self._tenant

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
            if ready(self.admin):
                self.data.timings["control plane ready"] = time.monotonic() - self.started
                return proc
            time.sleep(0.1)
        raise DemoError("the control plane was not ready (GET /readyz) within 30 s")

    def create_tenant(self) -> None:
        with step("POST /v1/tenants"):
            created = self.admin.post("/v1/tenants", {"name": self.session_id})
        self.data.tenant_id = str(created["tenant_id"])
        self._tenant = Api(Runtime(url=self.base_url, token=str(created["api_key"])))

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

    def _submit_one(self, kind: str, payload: Json, key: str, priority: str = "p1") -> Submitted:
        body = {
            "kind": kind,
            "execution_session_id": self.session_id,
            "priority": priority,
            "payload": payload,
        }
        try:
            # the Idempotency-Key makes the submission safe to retry through an outage
            response = self.tenant.send(
                "POST",
                "/v1/workunits",
                body=body,
                headers={"Idempotency-Key": f"{self.session_id}-{key}"},
                retry_s=10.0,
            )
        except ProblemError as exc:
            return Submitted(exc.status, refusal=exc)
        return Submitted(response.status_code, unit=WorkUnit.model_validate(response.json()))

    def _submit_all(self, units: Sequence[tuple[str, Json, str]]) -> None:
        for kind, payload, key in units:
            submitted = self._submit_one(kind, payload, key)
            if submitted.refusal is not None and submitted.status == 429:
                self.data.notes.append(
                    f"unit {key} refused by admission ({why(submitted.refusal)}); not retried"
                )
                continue
            if submitted.unit is None:
                reason = why(submitted.refusal) if submitted.refusal else "no unit"
                raise DemoError(f"POST /v1/workunits: {reason}")
            self.data.unit_ids.append(submitted.unit.id)

    def ramp_pressure(self) -> None:
        """With no capacity yet: the first wave takes the mode to THROTTLED, a second wave to
        CRITICAL, where a p1 submission is refused (429) and a p0 one admitted. The agent
        started afterwards drains it all, and the mode comes back down to OPEN."""
        if not self.wait_for_mode(CapacityMode.THROTTLED):
            return
        sleep = {"handler": "sleep", "args": {"ms": PRESSURE_SLEEP_MS}}
        self._submit_all([("cpu", sleep, f"wave2-{i}") for i in range(PRESSURE_SECOND_WAVE)])
        if not self.wait_for_mode(CapacityMode.CRITICAL):
            return
        refused = self._submit_one("cpu", sleep, "critical-p1")
        after = refused.refusal.retry_after if refused.refusal else None
        retry = f" (Retry-After {after} s)" if after else ""
        self.data.notes.append(f"pressure: in CRITICAL a p1 submission got {refused.status}{retry}")
        if refused.unit is not None:
            self.data.unit_ids.append(refused.unit.id)
        admitted = self._submit_one("cpu", sleep, "critical-p0", priority="p0")
        self.data.notes.append(f"pressure: in CRITICAL a p0 submission got {admitted.status}")
        if admitted.unit is not None:
            self.data.unit_ids.append(admitted.unit.id)

    def wait_for_mode(self, mode: CapacityMode, timeout_s: float = 8.0) -> bool:
        """Tail the log until the autoscaler switches the admission mode to ``mode``."""
        tail = Tail(
            self.admin,
            self._mode_after,
            time.monotonic() + timeout_s,
            event_type=EventType.CAPACITY_ADMISSION_MODE_CHANGED,
        )
        try:
            for event in tail:
                if payload_of(event, CapacityAdmissionModeChanged).to == mode:
                    self._mode_after = tail.after
                    return True
        except CliError as exc:
            self.data.notes.append(f"GET /v1/events while waiting: {why(exc)}")
            return False
        self._mode_after = tail.after
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
            registered, _ = attempt(lambda: {n["node_id"] for n in self.admin.pages("/v1/nodes")})
            if registered is not None and want <= registered:
                self.data.timings["agents registered"] = time.monotonic() - self.started
                return
            time.sleep(0.1)
        raise DemoError(f"agents {sorted(want)} did not register within 30 s")

    def wait_polling(self, agents: Sequence[Proc], timeout_s: float = 10.0) -> None:
        """Wait until every agent holds a long-poll (the ``krako_waiters`` gauge of
        GET /metrics), so that a unit offered to all of them reaches all of them at once; a
        fixed pause loses that race on a busy machine."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            waiting, _ = attempt(lambda: long_polls_waiting(self.admin))
            if waiting is not None and waiting >= len(agents):
                return
            time.sleep(0.05)
        self.data.notes.append(
            f"not every agent was long-polling after {timeout_s:g} s; submitted anyway"
        )

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
            with step(f"GET /v1/workunits/{unit_id}"):
                unit = self.tenant.unit(unit_id)
                left = max(0.0, deadline - time.monotonic())
                self.data.units[unit_id] = wait_for_unit(self.tenant, unit, left)

    def collect(self) -> None:
        d = self.data
        with step("GET /v1/events"):
            d.events = events_after(self.admin, d.start_seq)
        self._wait_billing()
        d.ledger, d.ledger_error = attempt(
            lambda: [
                LedgerEntry.model_validate(raw)
                for raw in self.tenant.pages("/v1/billing/ledger", key="entries")
            ]
        )
        d.wallet, d.wallet_error = attempt(self._wallet)
        d.capacity, d.capacity_error = attempt(
            lambda: CapacityReport.model_validate(self.admin.get("/v1/capacity"))
        )
        d.replay, d.replay_error = attempt(
            lambda: ReplayReport.model_validate(
                self.admin.post("/v1/billing/replay", read_timeout=600.0)
            )
        )
        for proc in self.fleet.procs:
            if proc.name.startswith("agent"):
                d.agent_lines[proc.name] = parse_agent_log(proc.log_path)

    def _wallet(self) -> Wallet:
        return Wallet.model_validate(self.tenant.get(f"/v1/billing/wallets/{self.data.tenant_id}"))

    def _wait_billing(self) -> None:
        """Billing folds the log asynchronously: wait until the wallet covers our last
        billable event (or give up after 10 s and say so)."""
        mine = [
            e.seq
            for e in self.data.events
            if e.type in BILLABLE and e.tenant_id == self.data.tenant_id
        ]
        if not mine:
            return
        target = max(mine)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            wallet, _ = attempt(self._wallet)
            if wallet is None:
                return  # reported by collect()
            if wallet.as_of_seq >= target:
                return
            time.sleep(0.2)
        self.data.notes.append(f"billing had not folded seq {target} after 10 s")

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
        with step("GET /v1/events"):
            earlier = events_after(self.admin)
        # A fresh log holds only the control plane's seeding (prices, billing policy), which
        # belongs to this run; anything with a tenant in it is an earlier run's.
        if any(e.type == EventType.TENANT_CREATED for e in earlier):
            self.data.start_seq = earlier[-1].seq
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
            self.wait_polling(agents)
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
        self.admin.close()
        if self._tenant is not None:
            self._tenant.close()


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

    def of_type(self, *types: EventType) -> list[Event]:
        return [e for e in self.d.events if e.type in types]

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
            u = self.d.units.get(unit_id)
            if u is None:
                rows.append([self.short[unit_id], unit_id, "?", "?", "?", "-", ""])
                self.problems.append(f"unit {unit_id} was not read back")
                continue
            shown = summarize_result(u.result)
            if u.error:
                shown = f"error: {json.dumps(u.error)[:70]}"
            rows.append(
                [
                    self.short[unit_id],
                    unit_id,
                    u.kind.value,
                    u.status.value,
                    str(u.attempt),
                    u.node_id or "-",
                    shown,
                ]
            )
            if not u.status.terminal:
                self.problems.append(f"unit {unit_id} is {u.status.value}, not terminal")
        self.out.table(["#", "unit", "kind", "status", "attempt", "node", "result"], rows)
        for note in self.d.notes:
            self.out.line(f"note: {note}")

    def timeline(self) -> None:
        events = self.d.events
        self.out.heading(f"Event timeline ({len(events)} events)")
        rows = [
            [str(e.seq), clock(e.recorded_at), e.type, self.unit(e.stream_id), summarize(e)]
            for e in events
        ]
        self.out.table(["seq", "time", "type", "unit/node", "details"], rows)

    def placements(self) -> None:
        scheduled = self.of_type(EventType.WORKUNIT_SCHEDULED)
        self.out.heading(f"Placements ({len(scheduled)})")
        if not scheduled:
            self.out.line("no placements")
        for e in scheduled:
            p = Placement.of(e)
            self.out.line(
                f"seq {e.seq} {self.unit(e.stream_id)} -> {p.node_id} "
                f"(offered to {', '.join(p.offered_to)}; rule: {p.rule or '?'})"
            )
            for c in p.candidates:
                comps = ", ".join(f"{k}={v}" for k, v in c.components.items())
                self.out.line(
                    f"    candidate {c.node_id}: score {c.score} free_slots {c.free_slots} "
                    f"({comps})"
                )
            for x in p.excluded:
                self.out.line(f"    excluded {x.node_id}: {x.reason}")
            if not p.excluded:
                self.out.line("    excluded: none")

    def claims(self) -> None:
        claimed = self.of_type(EventType.WORKUNIT_CLAIMED)
        placed = {
            (p.event.stream_id, p.attempt): p
            for p in map(Placement.of, self.of_type(EventType.WORKUNIT_SCHEDULED))
        }
        self.out.heading(f"Claims ({len(claimed)})")
        rows = []
        for e in claimed:
            claim = payload_of(e, WorkUnitClaimed)
            offer = placed.get((e.stream_id, claim.attempt))
            rows.append(
                [
                    str(e.seq),
                    self.unit(e.stream_id),
                    str(claim.attempt),
                    str(offer.node_id) if offer else "?",
                    (",".join(offer.offered_to) if offer else "") or "?",
                    claim.node_id,
                    clock(claim.lease_expires_at),
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
        invocations = self.of_type(EventType.LLM_INVOCATION_COMPLETED)
        if not invocations and self.opts.kind != "llm_pod":
            return
        self.out.heading(f"LLM telemetry ({len(invocations)} invocations)")
        billed = {x.source_event_id: x for x in self.d.ledger or []}
        rows = []
        for e in invocations:
            p = payload_of(e, LlmInvocationCompleted)
            line = billed.get(e.event_id)
            rows.append(
                [
                    self.unit(e.stream_id),
                    f"{p.provider}/{p.model}",
                    f"{p.tokens_in}+{p.tokens_out}={p.total_tokens}",
                    str(p.latency_ms),
                    p.estimated_cost_usd,
                    format_usd(line.amount_usd) if line else "(no ledger line)",
                    "platform cost (stale claim)" if p.stale_claim else "billed",
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
                str(x.source_seq),
                x.line_item_type.value,
                self.unit(x.work_unit_id),
                f"{x.quantity} {x.unit}",
                f"v{x.pricing.get('price_version', '?')}",
                format_usd(x.amount_usd),
            ]
            for x in self.d.ledger
        ]
        self.out.table(["source seq", "line item", "unit", "quantity", "price", "amount $"], rows)
        self.out.line(f"ledger: {len(self.d.ledger)} lines")
        completed = sum(1 for u in self.d.units.values() if u.status is WorkUnitStatus.COMPLETED)
        cpu_lines = sum(1 for x in self.d.ledger if x.line_item_type is LineItemType.WORKUNIT_CPU)
        if cpu_lines != completed:
            self.problems.append(f"{completed} completed units but {cpu_lines} workunit_cpu lines")

    def wallet(self) -> None:
        self.out.heading("Wallet")
        w = self.d.wallet
        if w is None:
            self.out.line(f"wallet: unavailable ({self.d.wallet_error})")
            self.problems.append("wallet unavailable")
            return
        parts = ", ".join(f"{k} {v}" for k, v in w.totals.model_dump(mode="json").items())
        self.out.line(
            f"wallet {w.tenant_id}: total {format_usd(w.total_usd)} USD ({parts}); "
            f"as of seq {w.as_of_seq}"
        )

    def capacity(self) -> None:
        self.out.heading("Capacity")
        changes = self.of_type(*CAPACITY_EVENTS)
        if not changes:
            self.out.line("no capacity changes (no capacity.* events in the log)")
        for e in changes:
            self.out.line(f"seq {e.seq} {e.type}: {summarize(e)}")
            if e.type == EventType.CAPACITY_SCALE_REQUESTED:
                inputs = payload_of(e, CapacityScaleRequested).inputs
            else:
                inputs = payload_of(e, CapacityAdmissionModeChanged).inputs
            keys = ("queued", "running", "total_slots", "utilization", "backlog_per_slot")
            shown = ", ".join(f"{k}={inputs[k]}" for k in keys if k in inputs)
            if shown:
                self.out.line(f"    inputs: {shown}")
        c = self.d.capacity
        if c is None:
            self.out.line(f"GET /v1/capacity: unavailable ({self.d.capacity_error})")
            return
        self.out.line(
            f"now: mode {c.mode.value}, desired_nodes {c.desired_nodes}, healthy_nodes "
            f"{c.healthy_nodes}, running {c.running}, utilization {c.utilization}, queued "
            f"{queue_text(c)}"
        )

    def replay(self) -> None:
        self.out.heading("Replay check")
        r = self.d.replay
        if r is None:
            self.out.line(f"replay: unavailable (POST /v1/billing/replay: {self.d.replay_error})")
            self.problems.append("replay unavailable")
            return
        detail = (
            f"{r.events_replayed} events replayed, {r.ledger_entries} ledger "
            f"entries, digest {r.live_digest[:16]}"
        )
        if r.identical:
            self.out.line(f"replay: identical ({detail})")
        else:
            self.out.line(
                f"replay: DIFFERENT (live {r.live_digest} vs replay {r.replay_digest}; {detail})"
            )
            self.problems.append("replay is not identical")

    def verdict(self) -> int:
        self.out.heading("Result")
        timings = ", ".join(f"{k} at {v:.1f}s" for k, v in self.d.timings.items())
        self.out.line(f"timings: {timings}")
        self.out.line(f"logs: {self.log_dir}")
        terminal = sum(1 for u in self.d.units.values() if u.status.terminal)
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
