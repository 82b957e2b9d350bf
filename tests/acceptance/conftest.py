"""Acceptance tier: the real control-plane process (``python -m control_plane.server``) on a
free port, on the database the ``db_url`` fixture made for the backend under test, driven over
real sockets (tests/support/processes.py has the process helpers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import ControlPlaneProcess, bearer

ADMIN = "acceptance-admin-token-0123456789"
JOIN = "acceptance-join-token-0123456789"

auth = bearer

StartControlPlane = Callable[..., ControlPlaneProcess]


@pytest.fixture
def control_plane(db_url: str, tmp_path: Path) -> Iterator[StartControlPlane]:
    """``control_plane(KRAKO_X="1", ...)`` starts a process on the test's database (one more
    replica at each call; ``port=`` picks its port); all are stopped afterwards."""
    started: list[ControlPlaneProcess] = []

    def start(port: int | None = None, **env: str) -> ControlPlaneProcess:
        n = len(started) + 1
        cp = ControlPlaneProcess(
            workdir=tmp_path,
            name="control-plane" if n == 1 else f"control-plane-{n}",
            env=env,
            admin_token=ADMIN,
            join_token=JOIN,
            database_url=db_url,
            **({"port": port} if port is not None else {}),
        )
        started.append(cp)
        return cp.start()

    yield start
    for cp in started:
        cp.stop()
