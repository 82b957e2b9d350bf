"""The control plane's Prometheus metrics (``GET /metrics``), read as numbers."""

from __future__ import annotations

import httpx


def metric(client: httpx.Client, name: str) -> float:
    """The value of the unlabelled metric ``name``."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"no metric {name!r} in:\n{r.text}")


def waiters(client: httpx.Client) -> int:
    """How many long-polls (node polls, event and unit waits) the server holds right now.

    A waiter registers before it checks the database, so once this counts a request, any
    change it waits for wakes it: a test can make work arrive *after* a poll is parked."""
    return int(metric(client, "krako_waiters"))
