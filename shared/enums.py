"""Enumerations of the public contract (API.md)."""

from __future__ import annotations

from enum import StrEnum


class WorkUnitKind(StrEnum):
    CPU = "cpu"
    LLM_POD = "llm_pod"


class Priority(StrEnum):
    P0 = "p0"
    P1 = "p1"
    P2 = "p2"
    P3 = "p3"
    P4 = "p4"
    P5 = "p5"
    P6 = "p6"
    P7 = "p7"
    P8 = "p8"
    P9 = "p9"

    @property
    def level(self) -> int:
        return int(self.value[1:])

    @classmethod
    def from_level(cls, level: int) -> Priority:
        return cls(f"p{level}")


class WorkUnitStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {WorkUnitStatus.COMPLETED, WorkUnitStatus.FAILED, WorkUnitStatus.CANCELLED}
)


class NodeHealth(StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    UNHEALTHY = "unhealthy"


class CapacityMode(StrEnum):
    OPEN = "OPEN"
    THROTTLED = "THROTTLED"
    CRITICAL = "CRITICAL"


class LineItemType(StrEnum):
    WORKUNIT_CPU = "workunit_cpu"
    LLM_TOKENS = "llm_tokens"
