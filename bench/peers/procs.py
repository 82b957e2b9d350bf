"""Child processes of a benchmark run, each in its own process group, all ended on exit.

Every process the harness starts goes through :class:`Children`, which puts it in a new session
(so a Ctrl-C in the terminal reaches only the harness, which then stops the children in order)
and ends it by signalling its whole process group: a Celery prefork worker's pool processes go
with their parent, and nothing is left behind when the harness fails half way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from ``/proc/<pid>/stat``: every thread, live or exited
    (the kernel folds an exited thread's time into the process), in seconds. Resolution is one
    clock tick (``SC_CLK_TCK``, usually 10 ms), so callers measure over many commands."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    rest = text[text.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


@dataclass
class Child:
    """One started process and the file its stdout and stderr go to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Children:
    """The run's child processes; :meth:`stop_all` ends every one still running."""

    workdir: Path
    running: list[Child] = field(default_factory=list)
    _serial: int = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> Child:
        self._serial += 1
        log_path = self.workdir / f"{self._serial:03d}-{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd or self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.running.append(child)
        return child

    def stop(self, children: Iterable[Child], timeout: float = 15.0) -> None:
        """SIGTERM each process group, wait for the leaders, then SIGKILL what is left of the
        groups (a pool process that outlived its parent, or a leader that would not stop)."""
        group = [c for c in children if c in self.running]
        for child in group:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in group:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in group:
            _signal_group(child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5)
            self.running.remove(child)

    def stop_all(self) -> None:
        # the newest first: workers before the servers they talk to
        self.stop(list(reversed(self.running)))


def _signal_group(child: Child, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)  # start_new_session: the group id is the leader's pid


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float = 30.0,
    watch: Sequence[Child] = (),
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail early, with its log, if a watched child exits."""
    deadline = time.monotonic() + timeout
    while True:
        for child in watch:
            if not child.alive():
                raise RuntimeError(
                    f"{child.name} exited with status {child.popen.returncode} while waiting "
                    f"for {what}; its log ends:\n{child.log_tail()}"
                )
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers below 500: the server is up (ready, for a readiness URL,
    which answers 503 until it is)."""
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False
