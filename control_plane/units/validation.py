"""What a submitted unit (or a node's report) must look like before it may enter the log.

``validate_payload`` checks a payload against its kind's schema (the one in
``shared.payloads``, which the agent's executors use too); ``ensure_storable`` refuses
JSON values the log cannot store (on every backend alike); ``validate_text`` refuses NUL
characters, which PostgreSQL text cannot hold. Each raises ``BadRequest`` (422).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import BaseModel

from control_plane.errors import BadRequest
from shared.enums import WorkUnitKind
from shared.payloads import PayloadError, UnitPayload, parse_payload
from shared.wire import WorkUnitSubmit


def validate_payload(kind: WorkUnitKind, payload: dict[str, Any]) -> UnitPayload:
    """The typed payload, by its kind's schema (``shared.payloads``, API.md), once it is also
    storable; raises BadRequest. The payload itself is stored as sent: the model only reads it."""
    try:
        parsed = parse_payload(kind, payload)
    except PayloadError as exc:
        raise BadRequest(exc.message) from None
    ensure_storable(payload, "payload")
    return parsed


def validate_text(item: WorkUnitSubmit, key: str | None) -> None:
    """NUL characters cannot be stored in PostgreSQL text: refuse them on every backend."""
    for name, value in (
        ("execution_session_id", item.execution_session_id),
        ("region", item.region),
        ("idempotency key", key),
    ):
        if value is not None and "\x00" in value:
            raise BadRequest(f"{name} must not contain NUL characters")


def ensure_storable(value: Any, what: str) -> None:
    """Refuse (422) a JSON value the log cannot store: integers beyond 64 bits, lone
    surrogates, nesting deeper than the encoder allows, and NaN or infinities (which the
    encoder would silently turn into null)."""
    # (a model's JSON dump already has NaN as null: judge its Python values for that)
    raw = value.model_dump() if isinstance(value, BaseModel) else value
    try:
        orjson.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{what} cannot be stored as JSON: {exc}")
    if not _all_finite(raw):
        raise BadRequest(f"{what} cannot be stored as JSON: NaN and infinities are not JSON")


def _all_finite(value: Any) -> bool:
    # iterative: the encoder above has already bounded the depth
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True
