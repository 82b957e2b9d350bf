"""``emit``: the one way commands write events. The event type is derived from the payload's
class (``shared.events.EVENT_TYPE_OF``), so a payload can never be stored under another type.

    emit(uow, WorkUnitCancelled(attempt=1, by="admin"), stream_id=unit_id, tenant_id=t,
         event_id=f"{unit_id}/cancelled", correlation_id=session)

``event(...)`` builds the ``NewEvent`` without appending it, for commands that append many
events in one statement (``emit_all``). An ``event_id`` derived from what the event is about
makes the append idempotent by construction (the database refuses a second one); without one
a fresh time-ordered id is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

from control_plane.db.uow import UnitOfWork
from control_plane.eventlog.store import append
from control_plane.ids import new_id
from shared.events import LogEvent, NewEvent, Payload, event_type_of

P = TypeVar("P", bound=Payload)


def event(
    payload: Payload,
    *,
    stream_id: str,
    tenant_id: str | None = None,
    event_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> NewEvent:
    """The event ``payload`` is the payload of, ready to append."""
    return NewEvent.model_construct(
        event_id=event_id if event_id is not None else new_id("evt"),
        type=event_type_of(payload),
        tenant_id=tenant_id,
        stream_id=stream_id,
        payload=payload,
        causation_id=causation_id,
        correlation_id=correlation_id,
    )


def emit(
    uow: UnitOfWork,
    payload: P,
    *,
    stream_id: str,
    tenant_id: str | None = None,
    event_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> LogEvent[P]:
    """Append one event inside the caller's transaction; returns it as stored (with its seq,
    and ``payload`` itself as its payload)."""
    stored = append(
        uow,
        [
            event(
                payload,
                stream_id=stream_id,
                tenant_id=tenant_id,
                event_id=event_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
        ],
    )[0]
    return cast(LogEvent[P], stored)  # append keeps the payload model it was given


def emit_all(uow: UnitOfWork, events: Sequence[NewEvent]) -> list[LogEvent[Payload]]:
    """Append events built with ``event`` in one statement, in order."""
    return append(uow, events)
