"""What a submitted unit (or a node's report) must look like before it may enter the log.

``validate_payload`` checks a payload against its kind's schema; ``ensure_storable`` refuses
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
from shared.wire import WorkUnitSubmit


def validate_payload(kind: WorkUnitKind, payload: dict[str, Any]) -> None:
    """The shape a payload must have for its kind (API.md); raises BadRequest."""
    if kind is WorkUnitKind.CPU:
        handler = payload.get("handler")
        if not isinstance(handler, str) or not handler.strip():
            raise BadRequest("cpu payload needs a non-empty string 'handler'")
        args = payload.get("args", {})
        if not isinstance(args, dict):
            raise BadRequest("cpu payload 'args' must be an object")
    else:
        prompt, messages = payload.get("prompt"), payload.get("messages")
        if prompt is None and messages is None:
            raise BadRequest("llm_pod payload needs 'prompt' (string) or 'messages' (list)")
        if prompt is not None and not isinstance(prompt, str):
            raise BadRequest("llm_pod 'prompt' must be a string")
        if messages is not None and (not isinstance(messages, list) or not messages):
            raise BadRequest("llm_pod 'messages' must be a non-empty list")
        model = payload.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise BadRequest("llm_pod 'model' must be a non-empty string")
        max_tokens = payload.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise BadRequest("llm_pod 'max_tokens' must be a positive integer")
    ensure_storable(payload, "payload")
    timeout = payload.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise BadRequest("'timeout_s' must be a positive number")


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
