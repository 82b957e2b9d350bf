"""Requests that wait: a node's long-poll, ``wait_s`` on a unit or the event log, and billing
reads that wait for the billing consumer. Each loop calls a query (or the poll command) and
sleeps on the notifier between calls.

A waiter subscribes *before* it reads, so a wake-up between the read and the wait is never
lost; a bounded re-check covers wake-ups that cannot reach it (another process on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from control_plane.billing import ledger
from control_plane.eventlog.projection import checkpoint_topic
from control_plane.eventlog.queries import read_events
from control_plane.eventlog.wait import wait_for
from control_plane.services import Services
from control_plane.units import claims
from control_plane.units.queries import read_unit
from shared.events import EventType
from shared.wire import EventsPage, PollReply, PollRequest, WorkUnit

# Wake-ups make a waiting poll return at once (in-process, and LISTEN/NOTIFY across replicas,
# which wakes every waiter after a reconnect). This re-check is only a backstop; an idle
# re-check only reads.
POLL_RECHECK_S = 10.0
WAIT_RECHECK_S = 1.0

BILLING_WAIT_S = 5.0
"""How long a billing read waits for the consumer to fold the log as it stood when the read
came in; past that it answers with what is folded."""
BILLING_RECHECK_S = 0.25
BILLING_TOPIC = checkpoint_topic("billing")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def poll(services: Services, request: Request, node_id: str, body: PollRequest) -> PollReply:
    """Return as soon as a unit is offered to (or, with ``claim``, claimed by) the node, or
    empty when ``wait_s`` runs out or the client goes away."""
    db, ctx, notifier = services.db, services.scheduler, services.notifier
    lease_s = services.settings.leases.lease_s
    deadline = time.monotonic() + body.wait_s
    disconnect = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            # only this node's offers wake it: a submission anywhere must not wake every
            # idle agent (placement, the sweep and completions put work on a node)
            with notifier.subscribe(f"node:{node_id}") as fut:
                assignments, granted = await run_in_threadpool(
                    claims.poll_once, db, ctx, node_id, body.max_units, body.claim, lease_s, True
                )
                if assignments or granted:
                    return PollReply(assignments=assignments, claims=granted)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return PollReply()
                await asyncio.wait(
                    {asyncio.shield(fut), disconnect},
                    timeout=min(remaining, POLL_RECHECK_S),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if disconnect.done():
                    return PollReply()
    finally:
        disconnect.cancel()
        with contextlib.suppress(BaseException):
            await disconnect


async def unit(services: Services, unit_id: str, tenant_id: str | None, wait_s: float) -> WorkUnit:
    """The unit, once it is terminal or ``wait_s`` has run out."""
    deadline = time.monotonic() + wait_s
    while True:
        with services.notifier.subscribe(f"unit:{unit_id}") as fut:
            found = await run_in_threadpool(read_unit, services.db, unit_id, tenant_id)
            remaining = deadline - time.monotonic()
            if found.status.terminal or remaining <= 0:
                return found
            # the fallback timeout covers wake-ups that cannot reach us (another process on
            # SQLite); on PostgreSQL LISTEN/NOTIFY wakes us at once
            await wait_for(fut, min(remaining, WAIT_RECHECK_S))


async def events(
    services: Services,
    after: int,
    limit: int,
    type_: EventType | None,
    tenant_id: str | None,
    wait_s: float,
) -> EventsPage:
    """Events past ``after``, once there is one or ``wait_s`` has run out (a tenant wakes only
    for its own events)."""
    deadline = time.monotonic() + wait_s
    topic = f"events:{tenant_id}" if tenant_id else "events"
    while True:
        with services.notifier.subscribe(topic) as fut:
            page = await run_in_threadpool(read_events, services.db, after, limit, type_, tenant_id)
            remaining = deadline - time.monotonic()
            if page.events or remaining <= 0:
                return page
            await wait_for(fut, min(remaining, WAIT_RECHECK_S))


async def billing_settled(services: Services) -> None:
    """Hold a billing read until the billing consumer has folded the log up to its head as
    of now (so a line shows right after the completion that caused it), at most
    ``BILLING_WAIT_S``. The read never folds: it asks this process's billing loop to run now
    and waits for the checkpoint, which any replica's consumer may be the one to move."""
    head: int | None = None
    deadline = 0.0
    while True:
        with services.notifier.subscribe(BILLING_TOPIC) as fut:
            now_head, folded = await run_in_threadpool(ledger.position, services.db)
            if head is None:  # the first look: what the read must see
                head = now_head
                if folded < head:
                    services.billing_due.fire()
                    deadline = time.monotonic() + BILLING_WAIT_S
            remaining = deadline - time.monotonic()
            if folded >= head or remaining <= 0:
                return
            await wait_for(fut, min(remaining, BILLING_RECHECK_S))
