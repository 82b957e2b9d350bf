"""Executors by unit kind: ``cpu`` (named handlers) and ``llm_pod`` (LLM calls)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from node_agent.executors.base import Executor, Invocation, Job, Success
from shared.enums import WorkUnitKind

if TYPE_CHECKING:
    from node_agent.settings import AgentSettings

__all__ = ["Executor", "Invocation", "Job", "Success", "build_executors"]


def build_executors(settings: AgentSettings) -> dict[WorkUnitKind, Executor]:
    """One executor per kind this agent offers (``--kinds``)."""
    executors: dict[WorkUnitKind, Executor] = {}
    if WorkUnitKind.CPU in settings.agent_kinds:
        from node_agent.executors.cpu import CpuExecutor, build_registry

        registry = build_registry(settings.handler_specs())
        # Headroom over max_concurrency: a handler that ignores cancellation keeps its thread
        # after its unit timed out or was revoked.
        workers = settings.max_concurrency * 2
        executors[WorkUnitKind.CPU] = CpuExecutor(registry, max_workers=workers)
    if WorkUnitKind.LLM_POD in settings.agent_kinds:
        from node_agent.executors.llm_pod import LlmPodExecutor
        from node_agent.llm import build_llm_client
        from node_agent.llm.pricing import PriceTable

        executors[WorkUnitKind.LLM_POD] = LlmPodExecutor(
            build_llm_client(settings),
            PriceTable(settings.llm_prices),
            default_model=settings.llm_model,
        )
    return executors
