"""The ``llm_pod`` executor: one LLM call per unit, telemetry first, then the result.

Payload: ``{"prompt": str}`` or ``{"messages": [...]}``, optional ``model`` and
``max_tokens``, by the schema of ``shared.payloads`` (the one the control plane checks at
submit; a payload that breaks it fails the unit as non-retryable).

Each call is returned as an :class:`Invocation` with the id
``"{unit_id}-{attempt}-{n}"`` (``n`` counts calls within the attempt, from 0); the agent
reports it (``llm-invocations``) before it completes the unit with
``{"text", "model", "usage": {"tokens_in", "tokens_out", "total_tokens"}}``.

``cpu_ms`` is this process's CPU time for the unit: the provider's local work (all of the
stub's) plus the executor's own steps; time spent waiting for a remote server is not CPU.
"""

from __future__ import annotations

import time
from typing import Any

from node_agent.executors.base import Invocation, Job, Success, cpu_ms, parse_unit_payload
from node_agent.llm.base import LlmClient, LlmRequest
from node_agent.llm.pricing import PriceTable
from shared.enums import WorkUnitKind


def parse_llm_payload(payload: dict[str, Any], default_model: str) -> LlmRequest:
    """The request an ``llm_pod`` payload describes (``default_model`` when it names none);
    ``InvalidPayloadError`` (non-retryable) if it breaks the schema."""
    parsed = parse_unit_payload(WorkUnitKind.LLM_POD, payload)
    return LlmRequest(
        messages=parsed.chat(), model=parsed.model or default_model, max_tokens=parsed.max_tokens
    )


class LlmPodExecutor:
    """Runs ``llm_pod`` units with one :class:`~node_agent.llm.base.LlmClient`."""

    kind = WorkUnitKind.LLM_POD

    def __init__(self, llm: LlmClient, prices: PriceTable, *, default_model: str) -> None:
        self.llm = llm
        self.prices = prices
        self.default_model = default_model

    async def execute(self, job: Job) -> Success:
        """Call the model, report the invocation, return the text and usage."""
        own_cpu = time.thread_time()
        request = parse_llm_payload(job.unit.payload, self.default_model)
        own_cpu = time.thread_time() - own_cpu

        started = time.perf_counter()
        response = await self.llm.complete(request)
        latency_ms = round((time.perf_counter() - started) * 1000)

        mark = time.thread_time()
        invocation = Invocation(
            invocation_id=f"{job.unit.id}-{job.attempt}-0",
            provider=self.llm.provider,
            model=request.model,
            tokens_in=response.tokens_in,
            tokens_out=response.tokens_out,
            total_tokens=response.total_tokens,
            latency_ms=latency_ms,
            estimated_cost_usd=self.prices.estimate(
                request.model, response.tokens_in, response.tokens_out
            ),
        )
        usage: dict[str, Any] = {
            "tokens_in": response.tokens_in,
            "tokens_out": response.tokens_out,
            "total_tokens": response.total_tokens,
        }
        if response.usage_estimated:
            usage["estimated"] = True
        result: dict[str, Any] = {"text": response.text, "model": request.model, "usage": usage}
        if response.model != request.model:
            result["response_model"] = response.model
        if response.finish_reason is not None:
            result["finish_reason"] = response.finish_reason
        own_cpu += time.thread_time() - mark

        return Success(
            result=result, cpu_ms=cpu_ms(own_cpu + response.cpu_s), invocations=(invocation,)
        )

    async def aclose(self) -> None:
        """Close the LLM client."""
        await self.llm.aclose()
