"""Following the control plane over time: a unit until it is terminal, the event log as it
grows. Both long-poll (the server holds the request until something happens) and ride out
an outage or a replica restart, since they only read."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from krako_cli.client import Api
from shared.events import Event
from shared.wire import WorkUnit

#: the longest hold the control plane grants a long-poll (API.md: wait_s 0-30)
LONG_POLL_S = 20.0
#: how long loops that only read ride out an outage or a replica restart
READ_RETRY_S = 30.0


def _hold(deadline: float | None) -> float:
    """How long the next long-poll may hold: LONG_POLL_S, or less near ``deadline``."""
    if deadline is None:
        return LONG_POLL_S
    return max(0.0, min(LONG_POLL_S, deadline - time.monotonic()))


def wait_for_unit(
    api: Api,
    unit: WorkUnit,
    timeout: float | None,
    on_update: Callable[[WorkUnit], None] | None = None,
) -> WorkUnit:
    """Long-poll ``unit`` until it is terminal or ``timeout`` runs out; the last state read.

    ``on_update`` sees each state read."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not unit.status.terminal and (deadline is None or time.monotonic() < deadline):
        hold = _hold(deadline)
        data = api.get(
            f"/v1/workunits/{unit.id}",
            params={"wait_s": round(hold, 3)},
            read_timeout=hold + 15.0,
            retry_s=READ_RETRY_S,
        )
        unit = WorkUnit.model_validate(data)
        if on_update is not None:
            on_update(unit)
    return unit


class Tail:
    """GET /v1/events from ``after`` on, long-polling until ``deadline`` (a monotonic time,
    or None: forever); yields each event once, in log order. ``event_type``: that type only."""

    def __init__(
        self, api: Api, after: int, deadline: float | None, *, event_type: str | None = None
    ) -> None:
        self.api = api
        self.after = after
        self.deadline = deadline
        self.event_type = event_type

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def __iter__(self) -> Iterator[Event]:
        while not self.expired():
            hold = _hold(self.deadline)
            page = self.api.get(
                "/v1/events",
                params={
                    "after": self.after,
                    "limit": 1000,
                    "wait_s": round(hold, 3),
                    "type": self.event_type,
                },
                read_timeout=hold + 15.0,
                retry_s=READ_RETRY_S,
            )
            for raw in page.get("events", []):
                event = Event.model_validate(raw)
                self.after = max(self.after, event.seq)
                yield event
            self.after = max(self.after, int(page.get("last_seq", self.after)))


def events_after(api: Api, after: int = 0) -> list[Event]:
    """Every event of the log past ``after`` as it stands now (no waiting), in order."""
    events: list[Event] = []
    while True:
        page = api.get("/v1/events", params={"after": after, "limit": 1000})
        batch = [Event.model_validate(raw) for raw in page.get("events", [])]
        if not batch:
            return events
        events.extend(batch)
        after = int(page.get("last_seq", batch[-1].seq))
