"""What every executor gets and returns.

An executor runs one claimed unit of its ``kind``: it returns :class:`Success` or raises an
:class:`~node_agent.errors.ExecutionError`. It never talks to the control plane itself: the
LLM calls an ``llm_pod`` made travel in ``Success.invocations``, and the agent reports them
before it reports the completion (outside the unit's timeout, so a slow control plane cannot
turn a finished unit into a timed-out one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, overload

from node_agent.errors import InvalidPayloadError
from shared.enums import WorkUnitKind
from shared.payloads import CpuPayload, LlmPodPayload, PayloadError, parse_payload
from shared.wire import WorkUnit


@dataclass(frozen=True, slots=True)
class Invocation:
    """Telemetry of one LLM call (``estimated_cost_usd`` is already 6-place money)."""

    invocation_id: str
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    total_tokens: int
    latency_ms: int
    estimated_cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class Success:
    """A finished attempt: the result, the CPU time it took (ms), the LLM calls it made."""

    result: Any
    cpu_ms: int
    invocations: tuple[Invocation, ...] = ()


@dataclass(slots=True)
class Job:
    """One claimed attempt handed to an executor.

    ``cancelled`` is set when the agent gives up on the attempt (timeout, revoked, shutdown);
    code running in a worker thread should check it and return early.
    """

    unit: WorkUnit
    attempt: int
    claim_token: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)


class Executor(Protocol):
    """Runs units of one kind."""

    kind: WorkUnitKind

    async def execute(self, job: Job) -> Success:
        """Run the job; raise ``ExecutionError`` to fail it."""
        ...

    async def aclose(self) -> None:
        """Release what the executor holds (threads, HTTP clients)."""
        ...


@overload
def parse_unit_payload(kind: Literal[WorkUnitKind.CPU], payload: Any) -> CpuPayload: ...
@overload
def parse_unit_payload(kind: Literal[WorkUnitKind.LLM_POD], payload: Any) -> LlmPodPayload: ...
def parse_unit_payload(kind: WorkUnitKind, payload: Any) -> CpuPayload | LlmPodPayload:
    """A unit's payload by its kind's schema (``shared.payloads``, the control plane's own);
    a payload that breaks it raises the non-retryable ``InvalidPayloadError``."""
    try:
        return parse_payload(kind, payload)
    except PayloadError as exc:
        raise InvalidPayloadError(exc.message) from None


def cpu_ms(seconds: float) -> int:
    """CPU seconds as the whole milliseconds reported in ``complete``."""
    return max(0, round(seconds * 1000))
