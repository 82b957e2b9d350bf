"""Real processes: ``python -m control_plane.server`` and ``python -m node_agent``.

Every child gets this environment without its ``KRAKO_*`` / ``OPENAI_*`` settings (a
developer's shell or a CI job must not leak into a test), runs in its work directory (so no
``.env`` of the checkout is read) and writes stdout and stderr to one log file there, kept for
failure messages. ``stop`` is SIGTERM, then SIGKILL if the process does not exit in time;
``kill`` is SIGKILL at once (no shutdown handlers: only what was committed survives).

A server keeps the port it was given (a free one by default) for every start, so a restart
after ``kill`` or ``stop`` is reachable at the same URL by the agents that know it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from tests.support.ports import HOST, free_port
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "harness-admin-token-0123456789abcdef"
JOIN_TOKEN = "harness-join-token-0123456789abcdef"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 4000
LEAKY_PREFIXES = ("KRAKO_", "OPENAI_")


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without ``KRAKO_*`` / ``OPENAI_*``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES)}
    env.update(extra)
    return env


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class ProcessExited(AssertionError):
    """A child exited while it was expected to run (or to become ready)."""

    def __init__(self, name: str, returncode: int, log: str) -> None:
        super().__init__(f"{name} exited with status {returncode}; its log ends:\n{log}")
        self.returncode = returncode
        self.log = log


@dataclass(kw_only=True)
class ChildProcess:
    """One child process, started again by ``start`` after it ended."""

    workdir: Path
    name: str = "process"
    env: Mapping[str, str] = field(default_factory=dict)
    pythonpath: Sequence[Path] = ()  # before the checkout, e.g. for a test's handler module
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join(str(p) for p in [*self.pythonpath, REPO_ROOT])
        return clean_environ(PYTHONUNBUFFERED="1", PYTHONPATH=path, **self.env)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def spawn(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check_running(self) -> None:
        """Raise ``ProcessExited`` (with the log) if the process is not running."""
        code = self.returncode
        if code is not None:
            raise ProcessExited(self.name, code, self.logs())

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None, f"{self.name} was never started"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to exit; its status. Fails (with the log) on ``timeout``."""
        assert self.proc is not None, f"{self.name} was never started"
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:g} s; its log ends:\n{self.logs()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def output(self) -> str:
        """Everything the process wrote, over all its starts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self, tail_chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the log, headed by the process's name (for failure messages)."""
        return f"--- {self.name} ({self.log_path.name})\n{self.output()[-tail_chars:]}"

    def json_lines(self) -> list[dict[str, Any]]:
        """The log's JSON lines (``--log-format json``), in order."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(kw_only=True)
class ServerProcess(ChildProcess):
    """An HTTP server started with ``--host``, ``--port`` and ``--log-level`` (uvicorn's and
    the control plane's flags); ready once ``GET ready_path`` answers 200."""

    argv: Sequence[str]
    port: int = field(default_factory=free_port)
    ready_path: str = "/readyz"
    log_level: str = "warning"
    start_timeout_s: float = START_TIMEOUT_S

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        flags = ["--host", HOST, "--port", str(self.port), "--log-level", self.log_level]
        return [*self.argv, *flags]

    def start(self) -> Self:
        """Start it and wait until it is ready; fails with its log if it exits first."""
        self.spawn()
        try:
            wait_until(
                f"{self.name} ready at {self.url}",
                self._ready,
                self.start_timeout_s,
                context=self.logs,
            )
        except ProcessExited:
            raise
        except AssertionError:
            self.kill()
            raise
        return self

    def restart(self) -> Self:
        """A clean stop, then a start on the same port."""
        self.stop()
        return self.start()

    def _ready(self) -> bool:
        self.check_running()
        try:
            return httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client of this server (``token`` as the bearer), 30 s timeouts by default."""
        kwargs.setdefault("timeout", httpx.Timeout(30.0))
        headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)


@dataclass(kw_only=True)
class ControlPlaneProcess(ServerProcess):
    """``python -m control_plane.server`` with the given settings (``env``: ``KRAKO_*``).

    The tokens are set from ``admin_token`` / ``join_token``; the database is
    ``database_url``, or SQLite under the data directory (``<workdir>/data``) when None."""

    name: str = "control-plane"
    argv: Sequence[str] = (sys.executable, "-m", "control_plane.server")
    admin_token: str = ADMIN_TOKEN
    join_token: str = JOIN_TOKEN
    database_url: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def environment(self) -> dict[str, str]:
        settings = {
            "KRAKO_ADMIN_TOKEN": self.admin_token,
            "KRAKO_NODE_JOIN_TOKEN": self.join_token,
            "KRAKO_DATA_DIR": str(self.data_dir),
        }
        if self.database_url is not None:
            settings["KRAKO_DATABASE_URL"] = self.database_url
        env = super().environment()
        env.update(settings)
        env.update(self.env)  # the test's settings win
        return env

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def agent(self, name: str, *args: str, **fields: Any) -> AgentProcess:
        """An agent of this control plane (its URL and join token), in ``<workdir>/<name>``
        with a state directory of its own; ``args`` are further flags."""
        workdir = fields.pop("workdir", self.workdir)
        return AgentProcess(
            workdir=workdir,
            name=name,
            control_plane_url=self.url,
            join_token=self.join_token,
            state_dir=workdir / name,
            args=args,
            **fields,
        )


@dataclass(kw_only=True)
class AgentProcess(ChildProcess):
    """``python -m node_agent`` with a flag for each field given, then ``args``."""

    name: str = "agent"
    control_plane_url: str | None = None
    join_token: str | None = None
    node_id: str | None = None
    state_dir: Path | None = None
    args: Sequence[str] = ()

    def command(self) -> list[str]:
        flags: list[str] = []
        for flag, value in (
            ("--control-plane", self.control_plane_url),
            ("--join-token", self.join_token),
            ("--node-id", self.node_id),
            ("--state-dir", self.state_dir),
        ):
            if value is not None:
                flags += [flag, str(value)]
        return [sys.executable, "-m", "node_agent", *flags, *self.args]

    def start(self) -> Self:
        self.spawn()
        return self


def stop_all(children: Iterable[ChildProcess], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to every running child at once, then wait for each (SIGKILL past
    ``timeout``): they shut down side by side, not one after the other."""
    children = list(children)
    for child in children:
        if child.running:
            child.send_signal(signal.SIGTERM)
    for child in children:
        child.stop(timeout)
