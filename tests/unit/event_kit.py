"""Stored events for the pure tests, built the way the log holds them: typed events from payload
models, and events whose stored JSON was changed by hand, read back through the real codec (so a
payload that no longer validates is exactly what a reader of such a row gets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from control_plane.eventlog.codec import read_payload
from shared.events import LogEvent, Payload


def read_row(
    seq: int,
    type_: str,
    payload: dict[str, Any],
    *,
    recorded_at: datetime,
    tenant_id: str | None = None,
    stream_id: str = "wu_1",
    correlation_id: str | None = None,
) -> LogEvent[Payload]:
    """The event a row of ``type_`` storing ``payload`` reads as."""
    return LogEvent(
        seq=seq,
        event_id=f"evt-{seq}",
        type=type_,
        tenant_id=tenant_id,
        stream_id=stream_id,
        payload=read_payload(type_, orjson.dumps(payload).decode()),
        recorded_at=recorded_at,
        correlation_id=correlation_id,
    )


def tampered(
    event: LogEvent[Payload], change: Callable[[dict[str, Any]], object]
) -> LogEvent[Payload]:
    """``event`` with its stored JSON object changed by ``change`` (in place), read back."""
    raw = event.payload.to_json_object()
    change(raw)
    return replace(event, payload=read_payload(event.type, orjson.dumps(raw).decode()))
