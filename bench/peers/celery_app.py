"""The Celery app of the benchmark: one no-op task, Redis as broker and result backend,
``acks_late`` (a task is acknowledged after it ran, so a worker that dies mid-task gives it
back). Workers load it with ``celery -A celery_app worker`` and read its settings from the
``BENCH_CELERY_*`` variables the harness sets; the harness builds its client with
:func:`make_app` and the same settings. Imports nothing from the benchmark, so a worker needs
only this directory on its path."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready

TASK = "bench.noop"


def make_app(redis_url: str, queue: str, key_prefix: str) -> Celery:
    app = Celery("bench", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
        # every key the run makes starts with this, so a shared Redis can be cleaned exactly
        broker_transport_options={"global_keyprefix": key_prefix},
        result_backend_transport_options={"global_keyprefix": key_prefix},
    )
    return app


app = make_app(
    os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_CELERY_QUEUE", "bench"),
    os.environ.get("BENCH_CELERY_PREFIX", "bench:"),
)


@app.task(name=TASK)
def noop() -> None:
    return None


@worker_ready.connect
def _tell_the_harness(**_: Any) -> None:
    ready_dir = os.environ.get("BENCH_CELERY_READY_DIR")
    if ready_dir:
        Path(ready_dir, f"{socket.gethostname()}-{os.getpid()}").touch()
