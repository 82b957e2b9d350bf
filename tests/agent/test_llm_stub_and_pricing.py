"""The deterministic stub provider, the price table and llm_pod payloads."""

from __future__ import annotations

import asyncio
import hashlib
from decimal import Decimal
from typing import Any

import pytest

from node_agent.errors import InvalidPayloadError
from node_agent.executors.base import Job
from node_agent.executors.llm_pod import LlmPodExecutor, parse_llm_payload
from node_agent.llm import StubLlmClient, build_llm_client
from node_agent.llm.base import LlmRequest, message_text
from node_agent.llm.pricing import PriceTable
from node_agent.llm.stub import stub_completion
from node_agent.settings import AgentSettings
from shared.wire import WorkUnit
from tests.agent.agent_fakes import unit_json


def request(text: str, max_tokens: int | None = None) -> LlmRequest:
    return LlmRequest(
        messages=[{"role": "user", "content": text}], model="gpt-4o-mini", max_tokens=max_tokens
    )


def test_stub_follows_its_documented_rule() -> None:
    text = "the quick brown fox"
    digest = hashlib.sha256(text.encode()).hexdigest()
    natural = 16 + int(digest[:4], 16) % 49
    reply = stub_completion(request(text))
    assert reply.tokens_in == 4
    assert reply.tokens_out == min(64, natural) == natural
    words = reply.text.split()
    assert len(words) == reply.tokens_out
    assert words[0] == hashlib.sha256(f"{digest}:0".encode()).hexdigest()[:8]
    assert reply.model == "gpt-4o-mini" and reply.finish_reason == "stop"
    assert reply.total_tokens == 4 + natural


def test_stub_is_deterministic_and_respects_max_tokens() -> None:
    assert stub_completion(request("same prompt")) == stub_completion(request("same prompt"))
    capped = stub_completion(request("same prompt", max_tokens=3))
    assert capped.tokens_out == 3 and len(capped.text.split()) == 3
    assert capped.finish_reason == "length"
    assert stub_completion(request("")).tokens_in == 1  # at least one token in
    assert stub_completion(request("a")).text != stub_completion(request("b")).text


def test_stub_reads_messages_including_multipart_content() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "two words"}, {"type": "image"}]},
    ]
    assert message_text(messages) == "be brief\ntwo words"
    reply = stub_completion(LlmRequest(messages=messages, model="m"))
    assert reply.tokens_in == 4


def test_prices_estimate_with_exact_decimals_and_prefixes(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    # 1000 in at 0.15/1M + 500 out at 0.60/1M = 0.00015 + 0.0003
    assert table.estimate("gpt-4o-mini", 1000, 500) == Decimal("0.000450")
    # A dated variant uses the longest matching entry (gpt-4o-mini, not gpt-4o).
    assert table.estimate("gpt-4o-mini-2024-07-18", 1000, 500) == Decimal("0.000450")
    assert table.estimate("gpt-4o", 1000, 1000) == Decimal("0.012500")
    # A model without an entry is priced by the default entry (2.50 / 10.00), as the
    # control plane prices it, and that is logged once per model.
    with caplog.at_level("WARNING", logger="krako.agent"):
        assert table.estimate("unknown-model", 10**6, 10**6) == Decimal("12.500000")
        # 12.5/1M = 0.0000125: rounded once, half to even
        assert table.estimate("unknown-model", 1, 1) == Decimal("0.000012")
    assert [r.getMessage() for r in caplog.records] == ["llm_price_default"]
    # Rounded once, half to even: 1 token at 0.15/1M is 0.00000015 -> 0.000000.
    assert table.estimate("gpt-4o-mini", 1, 0) == Decimal("0.000000")
    assert str(table.estimate("gpt-4o-mini", 10, 10)) == "0.000008"


def test_price_overrides_from_settings_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKO_LLM_PRICES", '{"my-llama": ["0.5", "1.5"], "gpt-4o": ["1", "2"]}')
    settings = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    table = PriceTable(settings.llm_prices)
    assert table.estimate("my-llama", 10**6, 10**6) == Decimal("2.000000")
    assert table.estimate("gpt-4o", 10**6, 0) == Decimal("1.000000")
    monkeypatch.setenv("KRAKO_LLM_PRICES", '{"m": [0.1, 0.2]}')  # floats are not money
    with pytest.raises(ValueError):
        AgentSettings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"prompt": 3},
        {"messages": []},
        {"messages": [{"content": "no role"}]},
        {"messages": ["hi"]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": 1, "content": "x"}]},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": True},
        {"prompt": "x", "model": 7},
    ],
)
def test_bad_llm_payloads_are_not_retryable(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError) as info:
        parse_llm_payload(payload, "gpt-4o-mini")
    assert info.value.retryable is False


def test_an_llm_pod_unit_with_string_messages_fails_as_non_retryable() -> None:
    # {"messages": ["hi"]} was once accepted at submit and then failed here: the control plane
    # now refuses it (tests/api/test_bad_input.py); one stored before still fails cleanly.
    unit = WorkUnit.model_validate(unit_json("wu_8", "llm_pod", {"messages": ["hi"]}))

    async def go() -> Any:
        ex = LlmPodExecutor(StubLlmClient(), PriceTable(), default_model="gpt-4o-mini")
        try:
            return await ex.execute(Job(unit=unit, attempt=1))
        finally:
            await ex.aclose()

    with pytest.raises(InvalidPayloadError) as info:
        asyncio.run(go())
    assert info.value.to_wire() == {
        "code": "invalid_payload",
        "message": "llm_pod payload 'messages[0]' must be a chat message (an object with a "
        "string 'role')",
        "retryable": False,
    }


def test_llm_payload_keeps_message_keys_and_lets_messages_win() -> None:
    messages = [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "tool_calls": [{"id": "c1"}]},
    ]
    request = parse_llm_payload({"messages": messages, "prompt": "ignored"}, "gpt-4o-mini")
    # as sent: extra keys kept, no "content": null added where the tenant left it out
    assert request.messages == messages
    assert (request.model, request.max_tokens) == ("gpt-4o-mini", None)
    request = parse_llm_payload({"prompt": "hello", "model": "o3", "max_tokens": 9}, "m")
    assert request == LlmRequest(
        messages=[{"role": "user", "content": "hello"}], model="o3", max_tokens=9
    )


def test_llm_pod_executor_returns_result_and_invocation() -> None:
    unit = WorkUnit.model_validate(
        unit_json(
            "wu_9",
            "llm_pod",
            {"messages": [{"role": "user", "content": "hi you"}], "model": "gpt-4.1-mini"},
            attempt=2,
        )
    )

    async def go() -> Any:
        ex = LlmPodExecutor(StubLlmClient(), PriceTable(), default_model="gpt-4o-mini")
        return await ex.execute(Job(unit=unit, attempt=2))

    success = asyncio.run(go())
    [invocation] = success.invocations
    expected = stub_completion(
        LlmRequest(messages=[{"role": "user", "content": "hi you"}], model="gpt-4.1-mini")
    )
    assert invocation.invocation_id == "wu_9-2-0"
    assert (invocation.provider, invocation.model) == ("stub", "gpt-4.1-mini")
    assert (invocation.tokens_in, invocation.tokens_out) == (2, expected.tokens_out)
    assert invocation.estimated_cost_usd == PriceTable().estimate(
        "gpt-4.1-mini", 2, expected.tokens_out
    )
    assert success.result == {
        "text": expected.text,
        "model": "gpt-4.1-mini",
        "usage": {
            "tokens_in": 2,
            "tokens_out": expected.tokens_out,
            "total_tokens": 2 + expected.tokens_out,
        },
        "finish_reason": "stop",
    }
    assert isinstance(success.cpu_ms, int)


def test_provider_is_chosen_by_settings() -> None:
    stub = AgentSettings(_env_file=None, llm_provider="stub")  # type: ignore[call-arg]
    assert isinstance(build_llm_client(stub), StubLlmClient)
    openai = AgentSettings(  # type: ignore[call-arg]
        _env_file=None, llm_provider="openai", openai_base_url="http://127.0.0.1:1/v1"
    )
    assert build_llm_client(openai).provider == "openai"
