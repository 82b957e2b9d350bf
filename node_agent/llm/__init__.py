"""LLM clients for ``llm_pod`` units: one interface, a deterministic stub and OpenAI.

``openai`` (the SDK) is imported only in this package, and only when that provider is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node_agent.llm.base import LlmClient, LlmRequest, LlmResponse
from node_agent.llm.stub import StubLlmClient

if TYPE_CHECKING:
    from node_agent.settings import AgentSettings

__all__ = ["LlmClient", "LlmRequest", "LlmResponse", "StubLlmClient", "build_llm_client"]


def build_llm_client(settings: AgentSettings) -> LlmClient:
    """The provider chosen by ``KRAKO_LLM_PROVIDER`` / ``--llm-provider``."""
    if settings.llm_provider == "openai":
        from node_agent.llm.openai_provider import OpenAILlmClient

        return OpenAILlmClient.from_settings(settings)
    return StubLlmClient()
