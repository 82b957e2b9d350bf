"""The openai provider against a real OpenAI-compatible server in another process, reached
by the real SDK (its default httpx2 transport) through ``KRAKO_OPENAI_BASE_URL``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from node_agent.agent import Agent
from node_agent.client import ControlPlaneClient
from node_agent.errors import LlmError
from node_agent.executors import build_executors
from node_agent.llm import build_llm_client
from node_agent.llm.base import LlmRequest, LlmResponse
from node_agent.settings import AgentSettings
from tests.agent.agent_fakes import FakeControlPlane
from tests.support.ports import free_port
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerProcess(
        workdir=tmp_path_factory.mktemp("llm"),
        name="openai-compat-server",
        argv=[sys.executable, "-m", "uvicorn", "tests.agent.openai_compat_server:app"],
        ready_path="/health",
    )
    with server.start():
        yield f"{server.url}/v1"


@pytest.fixture
def openai_settings(llm_server: str, monkeypatch: pytest.MonkeyPatch) -> AgentSettings:
    monkeypatch.setenv("KRAKO_LLM_PROVIDER", "openai")
    monkeypatch.setenv("KRAKO_OPENAI_BASE_URL", llm_server)
    monkeypatch.setenv("KRAKO_OPENAI_API_KEY", "sk-local")
    monkeypatch.setenv("KRAKO_OPENAI_MODEL", "local-model")
    monkeypatch.setenv("KRAKO_OPENAI_MAX_RETRIES", "2")
    return AgentSettings(_env_file=None)  # type: ignore[call-arg]


def complete(settings: AgentSettings, prompt: str, max_tokens: int | None = None) -> LlmResponse:
    async def go() -> LlmResponse:
        client = build_llm_client(settings)
        try:
            return await client.complete(
                LlmRequest(
                    messages=[{"role": "user", "content": prompt}],
                    model=settings.llm_model,
                    max_tokens=max_tokens,
                )
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_real_server_usage_is_reported(openai_settings: AgentSettings, llm_server: str) -> None:
    reply = complete(openai_settings, "one two three four")
    assert reply.text == "echo: one two three four"
    assert (reply.tokens_in, reply.tokens_out) == (4, 5)
    assert reply.model == "local-model" and not reply.usage_estimated
    stats = httpx.get(llm_server.removesuffix("/v1") + "/stats").json()
    assert stats["auth"][-1] == "Bearer sk-local"


def test_real_server_max_tokens_and_missing_usage(openai_settings: AgentSettings) -> None:
    capped = complete(openai_settings, "a b c d e f", max_tokens=2)
    assert capped.text == "echo: a" and capped.tokens_out == 2
    assert capped.finish_reason == "length"
    estimated = complete(openai_settings, "NOUSAGE please")
    assert estimated.usage_estimated and estimated.tokens_in == 2


def test_real_server_500_is_retried_by_the_sdk(openai_settings: AgentSettings) -> None:
    reply = complete(openai_settings, "FAIL500:first-try then fine")
    assert reply.text.startswith("echo: FAIL500:first-try")


def test_unreachable_server_is_a_retryable_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKO_LLM_PROVIDER", "openai")
    monkeypatch.setenv("KRAKO_OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("KRAKO_OPENAI_MAX_RETRIES", "0")
    settings = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(LlmError) as info:
        complete(settings, "anyone there?")
    assert info.value.retryable is True and info.value.code == "llm_unreachable"


def test_agent_runs_llm_pod_units_against_the_real_server(
    openai_settings: AgentSettings, tmp_path: Path
) -> None:
    settings = openai_settings.model_copy(
        update={
            "node_join_token": SecretStr("join-secret"),
            "agent_state_dir": tmp_path / "state",
            "poll_wait_s": 0.1,
        }
    )
    fake = FakeControlPlane()
    fake.submit("wu_llm", kind="llm_pod", payload={"prompt": "hello real server"})

    async def scenario() -> None:
        client = ControlPlaneClient("http://cp.test", transport=fake.transport())
        agent = Agent(settings, client, build_executors(settings))
        task = asyncio.create_task(agent.run())
        await fake.wait_until(lambda: "wu_llm" in fake.terminal, timeout=20)
        agent.request_stop("test")
        assert await asyncio.wait_for(task, 10) == 0
        await agent.aclose()

    asyncio.run(scenario())
    invocation = fake.invocations["wu_llm-1-0"]
    assert invocation["provider"] == "openai" and invocation["model"] == "local-model"
    assert (invocation["tokens_in"], invocation["tokens_out"], invocation["total_tokens"]) == (
        3,
        4,
        7,
    )
    # local-model has no entry: priced by the default one (2.50 / 10.00 per 1M), as the control
    # plane prices it: 3 x 2.5/1M + 4 x 10/1M = 0.0000475 -> 0.000048 (half to even)
    assert invocation["estimated_cost_usd"] == "0.000048"
    [done] = fake.completions["wu_llm"]
    assert done["result"]["text"] == "echo: hello real server"
    assert done["result"]["usage"] == {"tokens_in": 3, "tokens_out": 4, "total_tokens": 7}
