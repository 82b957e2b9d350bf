"""Acceptance tier: the real ``krako-control-plane`` process (uvicorn) on a free port, on the
database the ``db_url`` fixture made for the backend under test, driven over real sockets."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN = "acceptance-admin-token-0123456789"
JOIN = "acceptance-join-token-0123456789"
START_TIMEOUT_S = 30.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command(port: int) -> list[str]:
    script = shutil.which("krako-control-plane", path=str(Path(sys.executable).parent))
    base = [script] if script else [sys.executable, "-m", "control_plane.server"]
    return [*base, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


@dataclass
class ControlPlane:
    """One control-plane process; ``start`` again (after ``kill``) reuses the database."""

    db_url: str
    workdir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"control-plane-{self.starts}.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRAKO_")}
        env.update(
            {
                "KRAKO_DATABASE_URL": self.db_url,
                "KRAKO_ADMIN_TOKEN": ADMIN,
                "KRAKO_NODE_JOIN_TOKEN": JOIN,
                "KRAKO_DATA_DIR": str(self.workdir / "data"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env_overrides)
        with self.log_path.open("wb") as log:
            # cwd: the work dir, so no stray .env of the checkout is read
            self.proc = subprocess.Popen(
                _command(self.port),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"control plane exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=1.0)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"control plane not ready within {START_TIMEOUT_S}s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing; what was committed is all that is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:]
            for p in sorted(self.workdir.glob("control-plane-*.log"))
        )

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", httpx.Timeout(30.0))
        return httpx.Client(base_url=self.url, **kwargs)


@pytest.fixture
def control_plane(db_url: str, tmp_path: Path) -> Iterator[Callable[..., ControlPlane]]:
    """``control_plane(KRAKO_X="1", ...)`` starts a process on the test's database."""
    started: list[ControlPlane] = []

    def start(**env: str) -> ControlPlane:
        cp = ControlPlane(db_url, tmp_path, env_overrides=dict(env))
        started.append(cp)
        cp.start()
        return cp

    yield start
    for cp in started:
        cp.stop()
