"""The per-command CPU floor: a trivial FastAPI POST measured exactly as Krako's commands are."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from peers.common import Figure, Progress, cpu_per_command, idle_cpu_per_s
from peers.procs import Children, free_port, wait_until

APP = Path(__file__).with_name("baseline_app.py")
BODY = {"kind": "cpu", "execution_session_id": "bench", "payload": {"handler": "noop"}}


def measure(children: Children, env: dict[str, str], requests: int, progress: Progress) -> Figure:
    """Start the baseline app, warm it up, and read its CPU over ``requests`` POSTs sent one at
    a time over one keep-alive connection."""
    port = free_port()
    child = children.start("baseline", [sys.executable, str(APP), str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200,
            what="baseline app",
            watch=[child],
        )
        progress.note(f"baseline: trivial FastAPI POST x {requests}")
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(50):
                client.post("/v1/items", json=BODY).raise_for_status()
            idle = idle_cpu_per_s(child.pid, 0.5)

            def run() -> int:
                for i in range(requests):
                    client.post("/v1/items", json=BODY).raise_for_status()
                    if i % 50 == 0:
                        progress.show("baseline", f"{i}/{requests} requests")
                return requests

            figure = cpu_per_command(child.pid, run, idle_per_s=idle)
        progress.done()
        return figure
    finally:
        children.stop([child])
