"""The event codec on a real database, on every backend: what ``append`` stores reads back, typed
and in the wire form, exactly as it was appended; a stored row that does not validate reads as
an ``UnreadablePayload`` in a typed batch (and as its JSON on the wire) without stopping the
read."""

from __future__ import annotations

import orjson

from control_plane.db.engine import Database
from control_plane.db.uow import read_connection, write_transaction
from control_plane.eventlog import (
    append,
    append_idempotent,
    read_after,
    read_after_typed,
    read_stream,
    read_stream_typed,
)
from control_plane.eventlog.emit import emit, emit_all, event
from shared.events import (
    EventType,
    NewEvent,
    NodeDrained,
    Payload,
    UnreadablePayload,
    WorkUnitCompleted,
)
from tests.unit.event_examples import EXAMPLES


def test_every_event_type_reads_back_as_appended(db: Database) -> None:
    with write_transaction(db) as uow:
        stored = emit_all(
            uow,
            [
                event(payload, stream_id="s-1", tenant_id="ten_1", correlation_id=f"c-{kind}")
                for kind, payload in EXAMPLES.items()
            ],
        )
    with read_connection(db) as conn:
        typed = read_after_typed(conn, 0)
        wire = read_after(conn, 0)
        assert read_stream_typed(conn, "s-1") == typed
        assert read_stream(conn, "s-1") == wire
    # what append returned is what a reader gets, envelope and payload
    assert typed == stored
    assert [e.type for e in typed] == [kind.value for kind in EXAMPLES]
    for got, (kind, payload) in zip(typed, EXAMPLES.items(), strict=True):
        assert type(got.payload) is type(payload) and got.payload == payload
        assert got.correlation_id == f"c-{kind}"
    # the wire form is the stored JSON object, and the typed event's to_wire agrees with it
    for got, on_wire in zip(typed, wire, strict=True):
        assert got.to_wire() == on_wire
        assert on_wire.payload == orjson.loads(got.payload.model_dump_json(by_alias=True))


def test_emit_returns_the_stored_event_with_its_own_payload(db: Database) -> None:
    payload = NodeDrained(node_id="n1")
    with write_transaction(db) as uow:
        stored = emit(uow, payload, stream_id="n1", event_id="drained-1")
    assert stored.payload is payload and stored.type == "node.drained"
    with read_connection(db) as conn:
        [read] = read_after_typed(conn, 0)
    assert read == stored and read.recorded_at == stored.recorded_at


def test_a_row_that_does_not_validate_is_read_as_unreadable_and_does_not_stop_the_read(
    db: Database,
) -> None:
    # a completion whose cpu_ms is not an integer, appended through the real path: the log
    # stores whatever model it is given, so a base Payload with the wrong fields will do
    bad = NewEvent(
        event_id="bad",
        type=EventType.WORKUNIT_COMPLETED,
        stream_id="wu_1",
        payload=Payload.model_validate({"node_id": "n", "attempt": 1, "cpu_ms": "lots"}),
    )
    good = event(EXAMPLES[EventType.WORKUNIT_COMPLETED], stream_id="wu_2", event_id="good")
    with write_transaction(db) as uow:
        append(uow, [bad, good])
    with read_connection(db) as conn:
        first, second = read_after_typed(conn, 0)
        wire = read_after(conn, 0)
    assert isinstance(first.payload, UnreadablePayload)
    assert first.type == "workunit.completed"
    assert first.payload.raw == {"node_id": "n", "attempt": 1, "cpu_ms": "lots"}
    assert "cpu_ms: Input should be a valid integer, got str 'lots'" in first.payload.error
    assert "pricing: Field required" in first.payload.error
    assert isinstance(second.payload, WorkUnitCompleted)
    assert wire[0].payload == {"node_id": "n", "attempt": 1, "cpu_ms": "lots"}
    assert first.to_wire() == wire[0]


def test_append_idempotent_returns_the_stored_event_typed(db: Database) -> None:
    original = event(NodeDrained(node_id="n1"), stream_id="n1", event_id="once")
    with write_transaction(db) as uow:
        [first] = append_idempotent(uow, [original])
    again = event(NodeDrained(node_id="n1", note="a retry"), stream_id="n1", event_id="once")
    with write_transaction(db) as uow:
        [second] = append_idempotent(uow, [again])
    assert second == first
    assert isinstance(second.payload, NodeDrained) and second.payload.model_extra == {}
