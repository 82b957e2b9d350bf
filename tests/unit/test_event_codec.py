"""The event codec, payload by payload: every event type round-trips, an older reader reads a
newer log, and a payload that does not validate is a clear error (or, read in a batch, an
``UnreadablePayload`` that says why). The same conversions through a real database are in
``tests/contract/test_event_codec.py``."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from control_plane.eventlog.codec import (
    MalformedPayload,
    decode_payload,
    payload_json,
    read_payload,
)
from shared.events import (
    PAYLOADS,
    EventType,
    LogEvent,
    NodeDrained,
    Payload,
    TrustScoreChanged,
    UnknownPayload,
    UnreadablePayload,
    WorkUnitCompleted,
    event_type_of,
)
from tests.unit.event_examples import EXAMPLES

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def completed_json(**changes: object) -> str:
    raw = EXAMPLES[EventType.WORKUNIT_COMPLETED].to_json_object()
    raw.update(changes)
    return orjson.dumps(raw).decode()


def test_the_examples_cover_every_event_type() -> None:
    assert set(EXAMPLES) == set(EventType)
    for kind, payload in EXAMPLES.items():
        assert type(payload) is PAYLOADS[kind]


@pytest.mark.parametrize("kind", list(EventType), ids=str)
def test_every_event_type_round_trips(kind: EventType) -> None:
    payload = EXAMPLES[kind]
    text = payload_json(payload)
    back = decode_payload(kind.value, text)
    assert type(back) is PAYLOADS[kind]
    assert back == payload
    assert payload_json(back) == text  # re-encoding gives the stored text back, byte for byte
    assert back.to_json_object() == orjson.loads(text)


def test_aliases_are_stored_by_their_json_names() -> None:
    text = payload_json(EXAMPLES[EventType.TRUST_SCORE_CHANGED])
    assert orjson.loads(text)["from"] == 0.8 and "from_" not in orjson.loads(text)
    back = decode_payload("trust.score.changed", text)
    assert isinstance(back, TrustScoreChanged) and back.from_ == 0.8


def test_an_older_reader_keeps_what_a_newer_writer_added() -> None:
    text = completed_json(gpu_ms=77, carbon={"g": 1.5})
    back = decode_payload("workunit.completed", text)
    assert isinstance(back, WorkUnitCompleted)
    assert back.model_extra == {"gpu_ms": 77, "carbon": {"g": 1.5}}
    assert orjson.loads(payload_json(back)) == orjson.loads(text)


def test_a_type_this_version_does_not_know_is_kept_as_read() -> None:
    back = decode_payload("gpu.thermal.throttled", '{"node_id": "n", "celsius": 91}')
    assert isinstance(back, UnknownPayload)
    assert back.to_json_object() == {"node_id": "n", "celsius": 91}


def test_numbers_in_a_float_field_may_be_integers() -> None:
    back = decode_payload(
        "trust.score.changed",
        '{"node_id": "n", "from": 1, "to": 0, "reason": "manual", "quarantined": true}',
    )
    assert isinstance(back, TrustScoreChanged) and (back.from_, back.to) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (completed_json(cpu_ms=1.5), "cpu_ms: Input should be a valid integer, got float 1.5"),
        (completed_json(cpu_ms=True), "cpu_ms: Input should be a valid integer, got bool True"),
        (completed_json(cpu_ms="5"), "cpu_ms: Input should be a valid integer, got str '5'"),
        (
            completed_json(pricing={"usd_per_cpu_s": 0.00005, "price_version": 1}),
            "pricing.usd_per_cpu_s: Input should be a valid string, got float 5e-05",
        ),
        (completed_json(pricing={"usd_per_cpu_s": "1"}), "pricing.price_version: Field required"),
        (
            completed_json(llm_usage=[{"model": "m", "tokens_in": 1}]),
            "llm_usage[0].tokens_out: Field required; llm_usage[0].pricing: Field required",
        ),
        ('{"node_id": "n", "attempt": 1', "payload is not valid JSON"),
        ("[1, 2]", "payload: Input should be an object, got list [1, 2]"),
    ],
)
def test_a_payload_that_does_not_validate_is_a_clear_error(text: str, reason: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        decode_payload("workunit.completed", text)
    assert reason in info.value.reason
    assert info.value.event_type == "workunit.completed"
    assert str(info.value).startswith("workunit.completed payload does not validate: ")


def test_read_in_a_batch_an_unreadable_payload_says_why_and_keeps_what_was_stored() -> None:
    text = completed_json(cpu_ms="lots")
    got = read_payload("workunit.completed", text)
    assert isinstance(got, UnreadablePayload)
    assert got.error.startswith("cpu_ms: Input should be a valid integer, got str 'lots'")
    assert got.raw == orjson.loads(text)
    assert got.to_json_object() == orjson.loads(text)
    not_json = read_payload("workunit.completed", "{oops")
    assert isinstance(not_json, UnreadablePayload) and not_json.raw == "{oops"
    assert not_json.to_json_object() == {}


def test_a_stored_text_cannot_smuggle_in_another_type() -> None:
    # the codec splices the stored text into {"type": ..., "payload": <text>}: a text that is
    # not one JSON object must not be read as some other type's payload
    text = '{"node_id": "n"}, "type": "tenant.created", "payload": {"tenant_id": "t", "name": "x"}'
    with pytest.raises(MalformedPayload, match="not one JSON object"):
        decode_payload("node.drained", text)


def test_the_reason_of_a_huge_value_is_kept_short() -> None:
    got = read_payload("node.drained", orjson.dumps({"node_id": ["x" * 10_000]}).decode())
    assert isinstance(got, UnreadablePayload)
    assert len(got.error) < 200 and got.error.startswith("node_id: Input should be a valid")


def test_a_log_event_is_built_from_its_payload_and_gives_its_wire_form() -> None:
    event = LogEvent.of(
        EXAMPLES[EventType.NODE_HEALTH_CHANGED],
        seq=7,
        event_id="e-7",
        stream_id="node-a",
        recorded_at=AT,
        correlation_id="c",
    )
    assert event.type == "node.health.changed"
    wire = event.to_wire()
    assert (wire.seq, wire.event_id, wire.type, wire.stream_id) == (
        7,
        "e-7",
        "node.health.changed",
        "node-a",
    )
    assert (wire.tenant_id, wire.recorded_at, wire.correlation_id) == (None, AT, "c")
    assert wire.payload == orjson.loads(payload_json(event.payload))
    assert wire.payload["from"] == "healthy" and wire.payload["heartbeat_age_s"] == 12.004


@pytest.mark.parametrize(
    "payload",
    [UnknownPayload(raw={}), UnreadablePayload(raw={}, error="x"), Payload()],
    ids=["unknown", "unreadable", "bare"],
)
def test_what_was_not_read_as_a_type_can_never_be_written(payload: Payload) -> None:
    with pytest.raises(KeyError):
        event_type_of(payload)
    with pytest.raises(KeyError):
        LogEvent.of(payload, seq=1, event_id="e", stream_id="s", recorded_at=AT)


def test_a_model_belongs_to_one_type() -> None:
    assert event_type_of(NodeDrained(node_id="n")) is EventType.NODE_DRAINED
    assert len(set(PAYLOADS.values())) == len(PAYLOADS)
