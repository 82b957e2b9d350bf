"""The one payload schema (shared.payloads): every rule, its message, and what is kept."""

from __future__ import annotations

from typing import Any

import pytest

from shared.enums import WorkUnitKind
from shared.payloads import (
    FIELD_RULES,
    PAYLOAD_MODELS,
    ChatMessage,
    CpuPayload,
    LlmPodPayload,
    PayloadError,
    parse_payload,
    payload_timeout_s,
)

CPU, LLM = WorkUnitKind.CPU, WorkUnitKind.LLM_POD
NEEDS_INPUT = (
    "llm_pod payload needs 'prompt' (a string) or 'messages' (a non-empty list of chat messages)"
)
MESSAGE = "a chat message (an object with a string 'role')"
CONTENT = "a string, a list of parts (objects) or null"


@pytest.mark.parametrize(
    ("kind", "payload", "field", "message"),
    [
        (CPU, {}, "handler", "cpu payload needs 'handler', a non-empty string"),
        (CPU, {"handler": 3}, "handler", "cpu payload 'handler' must be a non-empty string"),
        (CPU, {"handler": ""}, "handler", "cpu payload 'handler' must be a non-empty string"),
        (CPU, {"handler": " \t"}, "handler", "cpu payload 'handler' must be a non-empty string"),
        (CPU, {"handler": None}, "handler", "cpu payload 'handler' must be a non-empty string"),
        (CPU, {"handler": "noop", "args": [1]}, "args", "cpu payload 'args' must be an object"),
        (CPU, {"handler": "noop", "args": None}, "args", "cpu payload 'args' must be an object"),
        (CPU, {"handler": "noop", "args": "a"}, "args", "cpu payload 'args' must be an object"),
        (CPU, ["noop"], None, "cpu payload must be an object"),
        (LLM, "hi", None, "llm_pod payload must be an object"),
        (LLM, {}, None, NEEDS_INPUT),
        (LLM, {"model": "m", "max_tokens": 5}, None, NEEDS_INPUT),
        (LLM, {"prompt": None, "messages": None}, None, NEEDS_INPUT),
        (LLM, {"prompt": 3}, "prompt", "llm_pod payload 'prompt' must be a string"),
        (LLM, {"prompt": ["x"]}, "prompt", "llm_pod payload 'prompt' must be a string"),
        (
            LLM,
            {"messages": []},
            "messages",
            "llm_pod payload 'messages' must be a non-empty list of chat messages",
        ),
        (
            LLM,
            {"messages": "hi"},
            "messages",
            "llm_pod payload 'messages' must be a non-empty list of chat messages",
        ),
        (
            LLM,
            {"messages": {"role": "user"}},
            "messages",
            "llm_pod payload 'messages' must be a non-empty list of chat messages",
        ),
        (
            LLM,
            {"messages": ["hi"]},
            "messages[0]",
            f"llm_pod payload 'messages[0]' must be {MESSAGE}",
        ),
        (
            LLM,
            {"messages": [{"role": "user"}, None]},
            "messages[1]",
            f"llm_pod payload 'messages[1]' must be {MESSAGE}",
        ),
        (
            LLM,
            {"messages": [{"content": "x"}]},
            "messages[0].role",
            "llm_pod payload needs 'messages[0].role', a string",
        ),
        (
            LLM,
            {"messages": [{"role": 1}]},
            "messages[0].role",
            "llm_pod payload 'messages[0].role' must be a string",
        ),
        (
            LLM,
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            f"llm_pod payload 'messages[0].content' must be {CONTENT}",
        ),
        (
            LLM,
            {"messages": [{"role": "user", "content": ["a part must be an object"]}]},
            "messages[0].content",
            f"llm_pod payload 'messages[0].content' must be {CONTENT}",
        ),
        (
            LLM,
            {"messages": [{"role": "user", "content": {"type": "text"}}]},
            "messages[0].content",
            f"llm_pod payload 'messages[0].content' must be {CONTENT}",
        ),
        (
            LLM,
            {"prompt": "x", "model": ""},
            "model",
            "llm_pod payload 'model' must be a non-empty string",
        ),
        (
            LLM,
            {"prompt": "x", "model": 4},
            "model",
            "llm_pod payload 'model' must be a non-empty string",
        ),
        *(
            (
                LLM,
                {"prompt": "x", "max_tokens": bad},
                "max_tokens",
                "llm_pod payload 'max_tokens' must be a positive integer",
            )
            for bad in (0, -3, 5.0, 1.5, True, "5")
        ),
        *(
            (
                kind,
                {**good, "timeout_s": bad},
                "timeout_s",
                f"{kind.value} payload 'timeout_s' must be a positive number",
            )
            for kind, good in ((CPU, {"handler": "noop"}), (LLM, {"prompt": "x"}))
            for bad in (0, -1, -0.5, True, False, "5", [1], float("nan"), float("inf"))
        ),
    ],
)
def test_every_rule_has_its_message_naming_the_field(
    kind: WorkUnitKind, payload: Any, field: str | None, message: str
) -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload(kind, payload)
    error = info.value
    assert (error.message, error.field, error.kind) == (message, field, kind.value)
    assert str(error) == message
    assert isinstance(error, ValueError)


def test_the_first_field_in_error_is_the_one_named() -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload(CPU, {"handler": "", "args": [], "timeout_s": 0})
    assert info.value.field == "handler"


def test_a_cpu_payload_parses_with_defaults_and_keeps_unknown_keys() -> None:
    payload = {"handler": "sleep", "args": {"ms": 5}, "note": {"any": ["thing"]}}
    parsed = parse_payload(CPU, payload)
    assert isinstance(parsed, CpuPayload)
    assert (parsed.handler, parsed.args, parsed.timeout_s) == ("sleep", {"ms": 5}, None)
    assert parsed.model_extra == {"note": {"any": ["thing"]}}
    assert parse_payload(CPU, {"handler": "noop"}).args == {}
    # the tenant's payload is only read, never rewritten
    assert payload == {"handler": "sleep", "args": {"ms": 5}, "note": {"any": ["thing"]}}
    # the handler is not trimmed: the agent looks up the name it was given
    assert parse_payload(CPU, {"handler": " noop"}).handler == " noop"


def test_timeouts_are_positive_numbers_and_integers_stay_integers() -> None:
    whole = parse_payload(CPU, {"handler": "noop", "timeout_s": 5})
    assert whole.timeout_s == 5 and isinstance(whole.timeout_s, int)
    part = parse_payload(LLM, {"prompt": "x", "timeout_s": 0.25})
    assert part.timeout_s == 0.25 and isinstance(part.timeout_s, float)
    assert parse_payload(CPU, {"handler": "noop", "timeout_s": None}).timeout_s is None


def test_payload_timeout_s_applies_the_same_rule_alone() -> None:
    assert payload_timeout_s({"timeout_s": 5}) == 5
    assert payload_timeout_s({"timeout_s": 0.5}) == 0.5
    assert payload_timeout_s({}) is None
    for bad in (0, -1, True, "5", float("nan"), float("inf"), None):
        assert payload_timeout_s({"timeout_s": bad}) is None
    # the rest of the payload is not judged here (the executor does that)
    assert payload_timeout_s({"handler": 3, "timeout_s": 2}) == 2


def test_an_llm_pod_payload_from_a_prompt_or_messages() -> None:
    prompt = parse_payload(LLM, {"prompt": "", "model": "gpt-4o", "max_tokens": 7})
    assert isinstance(prompt, LlmPodPayload)
    assert (prompt.prompt, prompt.model, prompt.max_tokens) == ("", "gpt-4o", 7)
    assert prompt.chat() == [{"role": "user", "content": ""}]

    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        {"role": "tool", "tool_call_id": "c1"},
    ]
    parsed = parse_payload(LLM, {"messages": messages, "model": None, "temperature": 0})
    assert isinstance(parsed, LlmPodPayload)
    assert parsed.messages is not None and parsed.messages[3] == ChatMessage(
        role="tool", tool_call_id="c1"
    )
    assert parsed.model is None and parsed.model_extra == {"temperature": 0}
    # what is sent is what was given: other keys kept, no "content" added where there was none
    assert parsed.chat() == messages


def test_with_both_the_messages_are_what_runs() -> None:
    parsed = parse_payload(LLM, {"prompt": "p", "messages": [{"role": "user", "content": "m"}]})
    assert isinstance(parsed, LlmPodPayload)
    assert parsed.chat() == [{"role": "user", "content": "m"}]


def test_parsed_payloads_are_frozen() -> None:
    parsed = parse_payload(CPU, {"handler": "noop"})
    with pytest.raises(ValueError):
        parsed.handler = "other"  # type: ignore[misc]


def test_kinds_given_as_strings_and_unknown_kinds() -> None:
    assert isinstance(parse_payload("cpu", {"handler": "noop"}), CpuPayload)
    assert isinstance(parse_payload("llm_pod", {"prompt": "x"}), LlmPodPayload)
    with pytest.raises(PayloadError, match="unknown work unit kind 'gpu'"):
        parse_payload("gpu", {})


def test_every_kind_has_a_schema_and_every_field_a_rule() -> None:
    assert set(PAYLOAD_MODELS) == set(WorkUnitKind)
    for model in PAYLOAD_MODELS.values():
        for name in model.model_fields:
            assert (name,) in FIELD_RULES, (model.__name__, name)
    for name in ChatMessage.model_fields:
        assert ("messages", "*", name) in FIELD_RULES, name
