"""Celery 5 with Redis as broker and result backend, under the comparison workload.

Workers: ``celery worker`` processes on the prefork pool, ``acks_late`` (see celery_app.py),
gossip, mingle and the worker heartbeat off (cluster chatter a two-worker benchmark does not
need), log level WARNING. Completion is the task's result record in the result backend (the
``SUCCESS`` meta a client's ``AsyncResult`` reads), counted by the harness with ``MGET``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.common import Figure, RunContext, Workload, drain, one_at_a_time, round_trips, warm_up
from peers.procs import Child, free_port, wait_until

PEERS_DIR = Path(__file__).parent


def missing() -> str | None:
    """Why this peer cannot run here, or None."""
    import importlib.util

    for module in ("celery", "redis"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


@dataclass
class RedisServer:
    """The Redis the Celery figures use: a private ``redis-server`` with ``appendfsync always``
    (every broker and result write on disk before it is acknowledged, as Krako's commits are),
    or, with ``--redis-url``, an existing server as it is configured."""

    url: str
    durability: dict[str, str]
    child: Child | None = None
    label: str = "redis"

    @classmethod
    def start(cls, ctx: RunContext, url: str | None) -> RedisServer:
        import redis

        if url is None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("redis-server not found: pass --redis-url to use a server")
            port = free_port()
            data = ctx.workdir / "redis-data"
            data.mkdir(exist_ok=True)
            argv = [
                binary,
                "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--protected-mode", "no",
            ]  # fmt: skip
            child = ctx.children.start("redis-server", argv, env=ctx.env)
            url = f"redis://127.0.0.1:{port}/0"
            client = redis.Redis.from_url(url)
            wait_until(lambda: bool(client.ping()), what="redis-server", watch=[child])
            server = cls(url, {}, child, "redis-aof")
        else:
            client = redis.Redis.from_url(url)
            client.ping()
            server = cls(url, {})
        for key in ("appendonly", "appendfsync", "save"):
            try:
                server.durability.update(client.config_get(key))
            except redis.ResponseError:  # CONFIG may be disabled on a managed server
                server.durability[key] = "unknown"
        server.durability["redis_version"] = str(client.info("server")["redis_version"])
        client.close()
        return server

    def stop(self, ctx: RunContext) -> None:
        if self.child is not None:
            ctx.children.stop([self.child])


@dataclass
class CeleryRun:
    """One queue, key prefix and set of workers on the run's Redis."""

    ctx: RunContext
    redis_url: str
    tag: str
    pool: str
    workers: list[Child] = field(default_factory=list)
    app: Any = None
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from peers.celery_app import make_app

        self.queue = f"kbench-{self.ctx.run_id}-{self.tag}"
        self.prefix = f"kbench-{self.ctx.run_id}-{self.tag}:"
        self.app = make_app(self.redis_url, self.queue, self.prefix)
        self.ready_dir = self.ctx.workdir / f"celery-{self.tag}-ready"
        self.ready_dir.mkdir(exist_ok=True)

    def start_workers(self, count: int, concurrency: int, *, wait: bool = True) -> None:
        env = dict(self.ctx.env)
        env.update(
            PYTHONPATH=str(PEERS_DIR),
            BENCH_CELERY_REDIS=self.redis_url,
            BENCH_CELERY_QUEUE=self.queue,
            BENCH_CELERY_PREFIX=self.prefix,
            BENCH_CELERY_READY_DIR=str(self.ready_dir),
        )
        for i in range(count):
            argv = [
                sys.executable, "-m", "celery", "-A", "celery_app", "worker",
                "--pool", self.pool, "--concurrency", str(concurrency),
                "--queues", self.queue, "--hostname", f"bench{i}-{self.tag}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING",
            ]  # fmt: skip
            self.workers.append(
                self.ctx.children.start(f"celery-{self.tag}-{i}", argv, env=env, cwd=PEERS_DIR)
            )
        if wait:
            wait_until(
                lambda: len(list(self.ready_dir.iterdir())) >= count,
                what="celery workers ready",
                timeout=60,
                watch=self.workers,
            )

    def stop_workers(self) -> None:
        self.ctx.children.stop(self.workers, timeout=20)
        self.workers = []

    def send(self, _i: int = 0) -> Any:
        result = self.app.send_task("bench.noop", queue=self.queue)
        self.ids.append(result.id)
        return result

    def completions(self) -> Callable[[], int]:
        """Counts the results stored for the ids sent so far (oldest outstanding first)."""
        client = self.app.backend.client
        key = self.app.backend.get_key_for_task
        pending: list[str] = []
        seen = 0
        state = {"done": 0, "failed": 0}

        def count() -> int:
            nonlocal pending, seen
            time.sleep(0.01)
            new = self.ids[seen:]
            seen += len(new)
            pending.extend(new)
            head = pending[:2000]
            if head:
                values = client.mget([key(i) for i in head])
                left = [i for i, v in zip(head, values, strict=True) if v is None]
                for v in values:
                    if v is not None and b'"SUCCESS"' not in v:
                        state["failed"] += 1
                state["done"] += len(head) - len(left)
                pending = left + pending[2000:]
            if state["failed"]:
                raise RuntimeError(f"{state['failed']} celery tasks did not succeed")
            return state["done"]

        return count

    def clean(self) -> None:
        client = self.app.backend.client
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        self.app.close()


def run(ctx: RunContext, wl: Workload, redis: RedisServer, pool: str) -> dict[str, Figure]:
    label = f"celery/{redis.label}"
    figures: dict[str, Figure] = {}
    live = CeleryRun(ctx, redis.url, "e2e", pool)
    try:
        live.start_workers(wl.workers, wl.concurrency)
        ctx.progress.note(f"{label}: end to end, {wl.units} tasks one send_task at a time")
        count = warm_up(live.send, live.completions(), wl.warmup, what=label)
        figures["e2e"] = one_at_a_time(
            live.send,
            count,
            units=wl.units,
            time_limit=wl.time_limit,
            label=f"{label} e2e",
            progress=ctx.progress,
        )
        sent = figures["e2e"]["submitted"]
        wait_until(lambda: count() >= sent, what="the celery backlog", timeout=120)
        ctx.progress.note(f"{label}: round trip x {wl.round_trips}")
        figures["round_trip"] = round_trips(
            lambda: live.send().get(timeout=10),
            samples=wl.round_trips,
            warmup=wl.warmup,
            label=f"{label} round trip",
            progress=ctx.progress,
            method="send_task, then AsyncResult.get() (redis result backend, pub/sub)",
        )
    finally:
        live.stop_workers()
        live.clean()

    backlog = CeleryRun(ctx, redis.url, "drain", pool)

    def enqueue_all() -> None:
        for _ in range(wl.units):
            backlog.send()

    try:
        figures["drain"] = drain(
            enqueue_all,
            lambda: backlog.start_workers(wl.workers, wl.concurrency, wait=False),
            backlog.completions(),
            units=wl.units,
            time_limit=wl.time_limit,
            label=f"{label} drain",
            progress=ctx.progress,
        )
    finally:
        backlog.stop_workers()
        backlog.clean()
    return figures
