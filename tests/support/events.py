"""The event log read over the HTTP API (``GET /v1/events``), as the admin or a tenant.

``EventTail`` reads incrementally (``after`` = the last seq it saw), so a test can tail the
log with long-polls instead of sleeping; ``read_events`` is one full read; ``wait_for_event``
tails until an event of a type shows up. Events are the API's JSON objects (dicts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.waiting import DEFAULT_TIMEOUT_S, wait_until

Event = dict[str, Any]
PAGE = 1000  # the API's largest page
TERMINAL = ("workunit.completed", "workunit.failed", "workunit.cancelled")


@dataclass
class EventTail:
    """The log as ``headers`` may see it, read page after page from ``last_seq`` on.

    ``type_`` filters on the server; everything read is kept in ``events``, in log order."""

    client: httpx.Client
    headers: Mapping[str, str]
    type_: str | None = None
    events: list[Event] = field(default_factory=list)
    last_seq: int = 0

    def read(self, wait_s: float = 0) -> list[Event]:
        """Every event past ``last_seq`` (kept in ``events``); returns the new ones. With
        ``wait_s`` the first request is held until there is one (or ``wait_s`` runs out)."""
        new: list[Event] = []
        while True:
            params: dict[str, Any] = {"after": self.last_seq, "limit": PAGE, "wait_s": wait_s}
            if self.type_ is not None:
                params["type"] = self.type_
            r = self.client.get("/v1/events", params=params, headers=dict(self.headers))
            assert r.status_code == 200, r.text
            page = r.json()
            new += page["events"]
            self.last_seq = page["last_seq"]
            if len(page["events"]) < PAGE:
                break
            wait_s = 0
        self.events += new
        return new

    def of(self, *types: str, stream_id: str | None = None) -> list[Event]:
        """The events read so far of any of ``types`` (all when none), about ``stream_id``."""
        return [
            e
            for e in self.events
            if (not types or e["type"] in types)
            and (stream_id is None or e["stream_id"] == stream_id)
        ]

    def wait_for(
        self,
        *types: str,
        stream_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        wait_s: float = 1.0,
    ) -> Event:
        """The latest event of one of ``types`` (about ``stream_id``), tailing the log with
        long-polls of ``wait_s`` until there is one."""

        def latest() -> Event | None:
            found = self.of(*types, stream_id=stream_id)
            if not found:
                self.read(wait_s=wait_s)  # held until something new is logged
                found = self.of(*types, stream_id=stream_id)
            return found[-1] if found else None

        self.read()  # catch up at once; only then hold

        about = f" about {stream_id}" if stream_id is not None else ""
        return wait_until(f"a {' or '.join(types)} event{about}", latest, timeout, interval=0)


def read_events(
    client: httpx.Client,
    headers: Mapping[str, str],
    type_: str | None = None,
    *,
    stream_id: str | None = None,
    after: int = 0,
) -> list[Event]:
    """Every event past ``after`` (of ``type_``, about ``stream_id``), in log order."""
    tail = EventTail(client, headers, type_=type_, last_seq=after)
    tail.read()
    return tail.of(stream_id=stream_id)


def unit_events(client: httpx.Client, headers: Mapping[str, str], unit_id: str) -> list[Event]:
    """A unit's events, in log order (``GET /v1/workunits/{id}/events``)."""
    r = client.get(f"/v1/workunits/{unit_id}/events", headers=dict(headers))
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def wait_for_event(
    client: httpx.Client,
    headers: Mapping[str, str],
    *types: str,
    stream_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Event:
    """The latest event of one of ``types`` (about ``stream_id``), once the log has one."""
    return EventTail(client, headers).wait_for(*types, stream_id=stream_id, timeout=timeout)
