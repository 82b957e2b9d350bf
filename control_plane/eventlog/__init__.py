"""The append-only event log: append (idempotent by event_id), read after a seq (in the wire
form or typed, through the codec), wait for new events, and projections that store their
checkpoint in the same transaction as their output."""

from control_plane.eventlog.store import (
    append,
    append_idempotent,
    last_seq,
    read_after,
    read_after_typed,
    read_stream,
    read_stream_typed,
)

__all__ = [
    "append",
    "append_idempotent",
    "last_seq",
    "read_after",
    "read_after_typed",
    "read_stream",
    "read_stream_typed",
]
