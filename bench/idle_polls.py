"""Memory of idle long-polls: N agents' polls held open on one control plane, against a bare
FastAPI app holding the same number of requests (``await asyncio.sleep``) in the same run.

    python bench/idle_polls.py [--polls 5000] [--backend sqlite|postgresql]

Prints the resident memory (RSS) of each server before and while the polls are held, and the
ratio of the increments. Requests are held by one asyncio client with one connection each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.procs import free_port, http_ok, wait_until

ADMIN = "bench-admin-token-0123456789"
JOIN = "bench-join-token-0123456789"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(url: str) -> None:
    wait_until(lambda: http_ok(url), what=url)


async def hold(url: str, n: int, headers: dict[str, str], body: dict[str, object]) -> int:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        tasks = [asyncio.create_task(c.post(url, json=body, headers=headers)) for _ in range(n)]
        await asyncio.sleep(min(20.0, 3 + n / 500))  # let them all arrive and settle
        held = len([t for t in tasks if not t.done()])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return held


def measure(
    pid: int, url: str, n: int, headers: dict[str, str], body: dict[str, object]
) -> tuple[float, float, int]:
    before = rss_mb(pid)
    result: dict[str, float] = {}

    async def run() -> int:
        task = asyncio.create_task(hold(url, n, headers, body))
        await asyncio.sleep(min(18.0, 2.5 + n / 500))
        result["during"] = rss_mb(pid)
        return await task

    held = asyncio.run(run())
    return before, result["during"], held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=5000)
    args = parser.parse_args()
    n = args.polls
    with tempfile.TemporaryDirectory() as tmp:
        bare_port = free_port()
        code = (
            "import asyncio\nfrom fastapi import FastAPI\nimport uvicorn\napp = FastAPI()\n"
            "@app.post('/poll')\nasync def poll(body: dict) -> dict:\n"
            "    await asyncio.sleep(25)\n    return {'assignments': [], 'claims': []}\n"
            f"uvicorn.run(app, host='127.0.0.1', port={bare_port}, log_level='warning', "
            "backlog=8192)\n"
        )
        bare = subprocess.Popen([sys.executable, "-c", code])
        port = free_port()
        env = {
            **os.environ,
            "KRAKO_DATABASE_URL": f"sqlite:///{Path(tmp) / 'idle.db'}",
            "KRAKO_ADMIN_TOKEN": ADMIN,
            "KRAKO_NODE_JOIN_TOKEN": JOIN,
        }
        cp = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control_plane.server",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        try:
            wait_ready(f"http://127.0.0.1:{bare_port}/docs")
            wait_ready(f"http://127.0.0.1:{port}/readyz")
            reg = httpx.post(
                f"http://127.0.0.1:{port}/v1/nodes",
                json={"node_id": "idle", "supported_kinds": ["cpu"], "max_concurrency": 4},
                headers={"Authorization": f"Bearer {JOIN}"},
            ).json()
            node = {"Authorization": f"Bearer {reg['node_token']}"}
            b0, b1, bh = measure(
                bare.pid, f"http://127.0.0.1:{bare_port}/poll", n, {}, {"wait_s": 25}
            )
            k0, k1, kh = measure(
                cp.pid,
                f"http://127.0.0.1:{port}/v1/nodes/idle/poll",
                n,
                node,
                {"max_units": 1, "wait_s": 25, "claim": True},
            )
        finally:
            for p in (bare, cp):
                p.terminate()
                p.wait()
    print(f"{n} idle long-polls held (one connection each)")
    print(f"bare FastAPI:  {b0:6.1f} MB idle -> {b1:6.1f} MB holding {bh} (+{b1 - b0:.1f} MB)")
    print(f"krako:         {k0:6.1f} MB idle -> {k1:6.1f} MB holding {kh} (+{k1 - k0:.1f} MB)")
    print(f"total RSS ratio krako/bare while holding: {k1 / b1:.2f}")


if __name__ == "__main__":
    main()
