"""The openai provider through the real SDK, with the HTTP layer mocked by respx.

The SDK (openai 3.x) speaks ``httpx2`` by default, which respx does not patch; it also accepts
a classic ``httpx.AsyncClient``, which is what these tests hand it, so every request goes
through the SDK's real request building, retries and parsing and stops at respx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from node_agent.errors import ConfigError, LlmError
from node_agent.llm.base import LlmRequest, LlmResponse
from node_agent.llm.openai_provider import OpenAILlmClient
from node_agent.settings import AgentSettings

BASE = "http://llm.test/v1"


def completion(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }
    body.update(overrides)
    return body


FAST_RETRY = {"retry-after-ms": "1"}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def call(max_retries: int = 2, timeout_s: float = 5.0, **request: Any) -> LlmResponse:
    async def go() -> LlmResponse:
        client = OpenAILlmClient(
            api_key="sk-test",
            base_url=BASE,
            timeout_s=timeout_s,
            max_retries=max_retries,
            http_client=httpx.AsyncClient(),
        )
        try:
            return await client.complete(
                LlmRequest(
                    messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini", **request
                )
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_success_reports_usage_from_the_reply(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").respond(200, json=completion())
    reply = call(max_tokens=20)
    assert reply == LlmResponse(
        text="hello!",
        model="gpt-4o-mini-2024-07-18",
        tokens_in=11,
        tokens_out=2,
        finish_reason="stop",
    )
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == "Bearer sk-test"
    import json

    assert json.loads(sent.content) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
    }


def test_max_completion_tokens_parameter_can_be_chosen(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").respond(200, json=completion())

    async def go() -> None:
        client = OpenAILlmClient(
            api_key="k",
            base_url=BASE,
            timeout_s=5,
            max_retries=0,
            max_tokens_param="max_completion_tokens",
            http_client=httpx.AsyncClient(),
        )
        await client.complete(
            LlmRequest(messages=[{"role": "user", "content": "x"}], model="o4-mini", max_tokens=7)
        )
        await client.aclose()

    asyncio.run(go())
    assert b'"max_completion_tokens":7' in route.calls.last.request.content


def test_429_then_success_is_retried_by_the_sdk(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").mock(
        side_effect=[
            httpx.Response(429, json={"error": {"message": "slow down"}}, headers=FAST_RETRY),
            httpx.Response(200, json=completion()),
        ]
    )
    assert call().tokens_in == 11
    assert route.call_count == 2


def test_500_after_retries_is_a_retryable_failure(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").respond(
        500, json={"error": {"message": "boom"}}, headers=FAST_RETRY
    )
    with pytest.raises(LlmError) as info:
        call(max_retries=2)
    assert route.call_count == 3  # first try + 2 retries
    assert info.value.retryable is True and info.value.code == "llm_http_500"


def test_429_that_persists_is_retryable(mock: respx.MockRouter) -> None:
    mock.post("/chat/completions").respond(
        429, json={"error": {"message": "quota"}}, headers=FAST_RETRY
    )
    with pytest.raises(LlmError) as info:
        call(max_retries=1)
    assert info.value.retryable is True and info.value.code == "llm_rate_limited"


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retryable(mock: respx.MockRouter, status: int) -> None:
    route = mock.post("/chat/completions").respond(status, json={"error": {"message": "no"}})
    with pytest.raises(LlmError) as info:
        call()
    assert route.call_count == 1
    assert info.value.retryable is False and info.value.code == f"llm_http_{status}"


def test_timeout_is_retryable(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").mock(side_effect=httpx.ReadTimeout("too slow"))
    with pytest.raises(LlmError) as info:
        call(max_retries=0)
    assert route.call_count == 1
    assert info.value.retryable is True and info.value.code == "llm_timeout"


def test_timeout_then_success(mock: respx.MockRouter) -> None:
    route = mock.post("/chat/completions").mock(
        side_effect=[httpx.ConnectTimeout("slow"), httpx.Response(200, json=completion())]
    )
    assert call(max_retries=1).text == "hello!"
    assert route.call_count == 2


def test_connection_refused_is_retryable(mock: respx.MockRouter) -> None:
    mock.post("/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(LlmError) as info:
        call(max_retries=0)
    assert info.value.retryable is True and info.value.code == "llm_unreachable"


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, json=completion(choices=[])),
        httpx.Response(200, text="<html>gateway</html>"),
    ],
)
def test_malformed_body_is_a_retryable_bad_response(
    mock: respx.MockRouter, response: httpx.Response
) -> None:
    mock.post("/chat/completions").mock(return_value=response)
    with pytest.raises(LlmError) as info:
        call()
    assert info.value.code == "llm_bad_response" and info.value.retryable is True


def test_reply_without_usage_is_estimated_and_flagged(mock: respx.MockRouter) -> None:
    body = completion(usage=None)
    body["choices"][0]["message"]["content"] = "three word reply"
    mock.post("/chat/completions").respond(200, json=body)
    reply = call()
    assert (reply.tokens_in, reply.tokens_out, reply.usage_estimated) == (1, 3, True)


def test_missing_key_without_base_url_is_a_config_error() -> None:
    settings = AgentSettings(_env_file=None, llm_provider="openai")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="KRAKO_OPENAI_API_KEY"):
        OpenAILlmClient.from_settings(settings)
