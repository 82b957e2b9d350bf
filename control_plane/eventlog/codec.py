"""The event codec: the one place a stored row becomes an event, and a payload model the JSON a
row stores.

Reading, two forms of a row of the ``events`` table:

- ``log_event(row)``: the typed ``LogEvent`` the control plane's readers take (billing, replay,
  projections). The payload text is validated into its type's model in one pydantic-core pass
  (the ``TypeAdapter`` of ``shared.events.TaggedPayload``, built once), JSON in, strict types:
  ``1.5`` or ``true`` is not an integer, ``"5"`` not a count, ``0.15`` not a decimal string, so a
  reader never sees a value its field's type does not promise. A row of an unknown type (a newer
  log) gets an ``UnknownPayload``; one that does not validate an ``UnreadablePayload`` with the
  reason: reading a batch never fails on one bad row.
- ``wire_event(row)``: the ``Event`` of ``GET /v1/events`` and a unit's events, the payload parsed
  once and passed on as the JSON object it is (no validate-and-dump round trip).

Writing: ``payload_json(model)`` is the text ``append`` stores, and ``stored_event`` the
``LogEvent`` it returns, built from the model it appended: nothing is validated or parsed on the
write path (a model is valid by construction).

``decode_payload`` / ``read_payload`` are the payload step alone (raising ``MalformedPayload`` /
never raising), for callers that hold a type and a payload text.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Row

from shared.events import (
    PAYLOADS,
    Event,
    LogEvent,
    NewEvent,
    Payload,
    TaggedPayload,
    UnknownPayload,
    UnreadablePayload,
)

_TAGGED: TypeAdapter[dict[str, Any]] = TypeAdapter(TaggedPayload)

# The JSON the adapter validates is {"type": <type>, "payload": <the stored text>}: the stored
# text is spliced in as it is, so it is parsed once, by pydantic-core, and never copied into
# Python objects first.
_PREFIX: dict[str, str] = {
    kind.value: '{"type":' + orjson.dumps(kind.value).decode() + ',"payload":' for kind in PAYLOADS
}

_MAX_SHOWN = 80
_POSITION = re.compile(r" at line \d+ column \d+$")


class MalformedPayload(ValueError):
    """A stored payload that does not validate against its event type's model; ``reason``
    names each offending field (``cpu_ms: Input should be a valid integer, got float 1.5``)."""

    def __init__(self, event_type: str, reason: str) -> None:
        super().__init__(f"{event_type} payload does not validate: {reason}")
        self.event_type = event_type
        self.reason = reason


def us_to_dt(us: int) -> datetime:
    """A stored ``*_us`` column (microseconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def dt_to_us(dt: datetime) -> int:
    """A datetime as microseconds since the epoch (a naive one is taken to be UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


# --------------------------------------------------------------------------- payloads


def payload_json(payload: Payload) -> str:
    """The text a row stores for ``payload`` (aliases such as ``from``, extras kept)."""
    return payload.model_dump_json(by_alias=True)


def _shown(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    text = repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return f"{kind} {text}"


def _where(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "payload"


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_context=False):
        if error["type"] == "json_invalid":
            # the position is in the spliced document, not in the stored text: leave it out
            detail = _POSITION.sub("", error["msg"].removeprefix("Invalid JSON: "))
            parts.append(f"payload is not valid JSON ({detail})")
            continue
        # the location starts with the union's tag and "payload"
        where = _where(tuple(error["loc"][2:]))
        got = "" if error["type"] == "missing" else f", got {_shown(error['input'])}"
        parts.append(f"{where}: {error['msg']}{got}")
    return "; ".join(parts)


def decode_payload(event_type: str, text: str) -> Payload:
    """The payload of an event of ``event_type`` stored as ``text``, validated into its model;
    an ``UnknownPayload`` for a type this version does not know. Raises ``MalformedPayload``."""
    prefix = _PREFIX.get(event_type)
    if prefix is None:
        raw = _loads(text)
        if not isinstance(raw, dict):
            raise MalformedPayload(event_type, "payload is not a JSON object")
        return UnknownPayload.model_construct(raw=raw)
    try:
        tagged = _TAGGED.validate_json(prefix + text + "}", strict=True)
    except ValidationError as exc:
        raise MalformedPayload(event_type, _reason(exc)) from None
    if tagged["type"] != event_type:  # the text was not one JSON value
        raise MalformedPayload(event_type, "payload is not one JSON object")
    payload: Payload = tagged["payload"]
    return payload


def read_payload(event_type: str, text: str) -> Payload:
    """``decode_payload``, with a payload that does not validate read as an
    ``UnreadablePayload`` (what was stored, and why it does not validate) instead of raised."""
    try:
        return decode_payload(event_type, text)
    except MalformedPayload as exc:
        return UnreadablePayload.model_construct(raw=_loads(text), error=exc.reason)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


# --------------------------------------------------------------------------- rows


def log_event(row: Row[Any]) -> LogEvent[Payload]:
    """A row of ``events`` as a typed event (the payload validated once, see the module
    docstring)."""
    return LogEvent(
        seq=int(row.seq),
        event_id=row.event_id,
        type=row.type,
        tenant_id=row.tenant_id,
        stream_id=row.stream_id,
        payload=read_payload(row.type, row.payload),
        recorded_at=us_to_dt(row.recorded_at_us),
        causation_id=row.causation_id,
        correlation_id=row.correlation_id,
    )


def wire_event(row: Row[Any]) -> Event:
    """A row of ``events`` as the wire ``Event``: the stored payload as the JSON object it is
    (rows come from our own log: only the shape is needed, no validation)."""
    return Event.model_construct(
        seq=int(row.seq),
        event_id=row.event_id,
        type=row.type,
        tenant_id=row.tenant_id,
        stream_id=row.stream_id,
        payload=orjson.loads(row.payload),
        recorded_at=us_to_dt(row.recorded_at_us),
        causation_id=row.causation_id,
        correlation_id=row.correlation_id,
    )


def row_values(event: NewEvent, now_us: int) -> dict[str, Any]:
    """The column values that store ``event`` at ``now_us`` (``seq`` is the database's)."""
    return {
        "event_id": event.event_id,
        "type": event.type.value,
        "tenant_id": event.tenant_id,
        "stream_id": event.stream_id,
        "payload": payload_json(event.payload),
        "recorded_at_us": now_us,
        "causation_id": event.causation_id,
        "correlation_id": event.correlation_id,
    }


def stored_event(event: NewEvent, seq: int, recorded_at: datetime) -> LogEvent[Payload]:
    """The typed event ``event`` became when stored at ``seq``: its own payload model, neither
    re-parsed nor re-validated."""
    return LogEvent(
        seq=seq,
        event_id=event.event_id,
        type=event.type.value,
        tenant_id=event.tenant_id,
        stream_id=event.stream_id,
        payload=event.payload,
        recorded_at=recorded_at,
        causation_id=event.causation_id,
        correlation_id=event.correlation_id,
    )
