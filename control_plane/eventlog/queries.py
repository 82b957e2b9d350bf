"""The event log as the API reads it (no writes)."""

from __future__ import annotations

from control_plane.db.engine import Database
from control_plane.eventlog.store import read_after
from shared.events import EventType
from shared.wire import EventsPage


def read_events(
    db: Database, after: int, limit: int, type_: EventType | None, tenant_id: str | None
) -> EventsPage:
    """The query behind ``GET /v1/events``: up to ``limit`` events past ``after`` (of one type
    when given; one tenant's when given), and the seq to pass as the next ``after``."""
    types = [type_.value] if type_ is not None else None
    with db.engine.connect() as conn:
        found = read_after(conn, after, limit, types=types, tenant_id=tenant_id)
    return EventsPage(events=found, last_seq=found[-1].seq if found else after)
