"""The payload schema of each work-unit kind, and the one parser both sides use.

The control plane parses a payload at submit (a malformed one is 422 there), the budget
estimate reads the parsed model, and the agent's executors parse it again before they run it
(a malformed payload that reached an agent anyway, for example one stored before a rule was
added, fails the unit as non-retryable). One schema, so the two sides cannot disagree about
what a runnable payload is.

``cpu``::

    {"handler": str (not blank), "args": {...} (default {}), "timeout_s": number > 0}

``llm_pod``::

    {"prompt": str} or {"messages": [message, ...] (at least one)},
    optional "model": str (not empty), "max_tokens": int > 0, "timeout_s": number > 0

A message is an object with a string ``role`` and a ``content`` that is a string, a list of
parts (objects, such as ``{"type": "text", "text": ...}``) or null (or absent); its other keys
(``name``, ``tool_calls``, ...) are kept. With both ``prompt`` and ``messages``, the messages
are what runs.

Types are strict, as JSON has them: ``true`` is not a number, ``5.0`` is not an integer and
``"5"`` is not a number. Keys a schema does not name are kept (the control plane stores the
payload exactly as the tenant sent it; the parsed model only reads it). Every rule is broken
with one error type, :class:`PayloadError`, whose message names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.enums import WorkUnitKind


class PayloadError(ValueError):
    """A payload breaks its kind's schema. ``field`` is the path of the offending key
    (``"handler"``, ``"messages[0].role"``), ``None`` when the payload as a whole is wrong."""

    def __init__(self, message: str, *, kind: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.field = field


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Seconds = (
    Annotated[int, Strict(), Field(gt=0)]
    | Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
)
"""A duration in seconds: a JSON number above zero (an integer stays an integer)."""

StrictText = Annotated[str, Strict()]
NonBlankText = Annotated[str, Strict(), AfterValidator(_not_blank)]
NonEmptyText = Annotated[str, Strict(), Field(min_length=1)]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
Part = Annotated[dict[str, Any], Strict()]


class ChatMessage(BaseModel):
    """One chat message of an ``llm_pod`` payload (OpenAI's shape; other keys are kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    role: StrictText
    content: StrictText | Annotated[list[Part], Strict()] | None = None


class CpuPayload(BaseModel):
    """A ``cpu`` unit: the handler to run and its arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)

    handler: NonBlankText
    args: Annotated[dict[str, Any], Strict()] = Field(default_factory=dict)
    timeout_s: Seconds | None = None


class LlmPodPayload(BaseModel):
    """An ``llm_pod`` unit: one chat completion, from a prompt or from messages."""

    model_config = ConfigDict(extra="allow", frozen=True)

    prompt: StrictText | None = None
    messages: Annotated[list[ChatMessage], Strict(), Field(min_length=1)] | None = None
    model: NonEmptyText | None = None
    max_tokens: PositiveInt | None = None
    timeout_s: Seconds | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> LlmPodPayload:
        if self.prompt is None and self.messages is None:
            raise ValueError(
                "llm_pod payload needs 'prompt' (a string) or 'messages' (a non-empty list of "
                "chat messages)"
            )
        return self

    def chat(self) -> list[dict[str, Any]]:
        """The messages to send: ``messages`` as given (keys the tenant left out stay out),
        else the prompt as one user message."""
        if self.messages is not None:
            return [m.model_dump(exclude_unset=True) for m in self.messages]
        return [{"role": "user", "content": self.prompt}]


UnitPayload = CpuPayload | LlmPodPayload

PAYLOAD_MODELS: Mapping[WorkUnitKind, type[CpuPayload] | type[LlmPodPayload]] = {
    WorkUnitKind.CPU: CpuPayload,
    WorkUnitKind.LLM_POD: LlmPodPayload,
}
"""The schema of each kind."""

_BY_NAME = {kind.value: model for kind, model in PAYLOAD_MODELS.items()}

FIELD_RULES: Mapping[tuple[str, ...], str] = {
    ("handler",): "a non-empty string",
    ("args",): "an object",
    ("timeout_s",): "a positive number",
    ("prompt",): "a string",
    ("messages",): "a non-empty list of chat messages",
    ("messages", "*"): "a chat message (an object with a string 'role')",
    ("messages", "*", "role"): "a string",
    ("messages", "*", "content"): "a string, a list of parts (objects) or null",
    ("model",): "a non-empty string",
    ("max_tokens",): "a positive integer",
}
"""What each field must be, by its path (``"*"`` stands for a list index): the words of every
``PayloadError``, one sentence per field whatever the way it was broken."""


@overload
def parse_payload(kind: Literal[WorkUnitKind.CPU], payload: Any) -> CpuPayload: ...
@overload
def parse_payload(kind: Literal[WorkUnitKind.LLM_POD], payload: Any) -> LlmPodPayload: ...
@overload
def parse_payload(kind: WorkUnitKind | str, payload: Any) -> UnitPayload: ...
def parse_payload(kind: WorkUnitKind | str, payload: Any) -> UnitPayload:
    """The typed payload of a unit of ``kind``; raises :class:`PayloadError` naming the first
    field that breaks the schema (or an unknown kind)."""
    name = str(kind)
    model = _BY_NAME.get(name)
    if model is None:
        raise PayloadError(f"unknown work unit kind {name!r}", kind=name)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _payload_error(name, exc) from None


_SECONDS: TypeAdapter[int | float] = TypeAdapter(Seconds)


def payload_timeout_s(payload: Mapping[str, Any]) -> int | float | None:
    """The payload's ``timeout_s`` by the schema's rule, without parsing the rest (the agent
    arms a unit's timeout before its executor parses the payload); ``None`` when it is absent
    or breaks the rule (the executor then refuses the payload)."""
    value = payload.get("timeout_s")
    if value is None:
        return None
    try:
        return _SECONDS.validate_python(value)
    except ValidationError:
        return None


def _payload_error(kind: str, exc: ValidationError) -> PayloadError:
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = error["loc"]
    if not loc:
        if error["type"] == "model_type":
            return PayloadError(f"{kind} payload must be an object", kind=kind)
        # a rule across fields (a model validator): its ValueError has the whole sentence
        cause = error.get("ctx", {}).get("error")
        return PayloadError(str(cause) if cause is not None else error["msg"], kind=kind)
    # The longest prefix of the location that names a field (union branches are not fields).
    key: tuple[str, ...] = ()
    path = ""
    for part in loc:
        step = "*" if isinstance(part, int) else part
        if (*key, step) not in FIELD_RULES:
            break
        key = (*key, step)
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    rule = FIELD_RULES.get(key)
    if rule is None:  # a field without a rule of its own: say what pydantic says
        where = ".".join(str(p) for p in loc)
        return PayloadError(f"{kind} payload '{where}': {error['msg']}", kind=kind, field=where)
    if error["type"] == "missing" and len(key) == len(loc):
        return PayloadError(f"{kind} payload needs '{path}', {rule}", kind=kind, field=path)
    return PayloadError(f"{kind} payload '{path}' must be {rule}", kind=kind, field=path)
