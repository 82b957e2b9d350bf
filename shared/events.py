"""Every event type of the log and its payload schema: the one place that lists them.

An event is an envelope (``seq``, ``event_id``, ``type``, ``tenant_id``, ``stream_id``,
``payload``, ``recorded_at``, ``causation_id``, ``correlation_id``) around a payload whose
schema is fixed by its type. ``PAYLOADS`` maps each type name to its payload model.
Payload models allow extra keys so that a reader built against an older schema can still
read a newer log.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.enums import CapacityMode, NodeHealth, Priority, WorkUnitKind


class EventType(StrEnum):
    TENANT_CREATED = "tenant.created"
    TENANT_LIMITS_CHANGED = "tenant.limits.changed"
    WORKUNIT_SUBMITTED = "workunit.submitted"
    WORKUNIT_SCHEDULED = "workunit.scheduled"
    WORKUNIT_UNSCHEDULED = "workunit.unscheduled"
    WORKUNIT_CLAIMED = "workunit.claimed"
    WORKUNIT_LEASES_RENEWED = "workunit.leases.renewed"
    LLM_INVOCATION_COMPLETED = "llm.invocation.completed"
    WORKUNIT_COMPLETED = "workunit.completed"
    WORKUNIT_FAILED = "workunit.failed"
    WORKUNIT_LEASE_EXPIRED = "workunit.lease_expired"
    WORKUNIT_CANCELLED = "workunit.cancelled"
    NODE_REGISTERED = "node.registered"
    NODE_DRAINED = "node.drained"
    NODE_HEALTH_CHANGED = "node.health.changed"
    TRUST_SCORE_CHANGED = "trust.score.changed"
    CAPACITY_SCALE_REQUESTED = "capacity.scale.requested"
    CAPACITY_ADMISSION_MODE_CHANGED = "capacity.admission.mode.changed"
    CAPACITY_OVERRIDE_CLEARED = "capacity.override.cleared"
    BILLING_POLICY_CHANGED = "billing.policy.changed"
    BILLING_PRICE_CHANGED = "billing.price.changed"
    BILLING_BUDGET_SET = "billing.budget.set"
    BILLING_BUDGET_REFUSED = "billing.budget.refused"


class Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class TenantCreated(Payload):
    """A tenant was created (its API key is never in the log, only in the tenant table)."""

    tenant_id: str
    name: str


class TenantLimitsChanged(Payload):
    """An admin set a tenant's limits (None: unlimited)."""

    tenant_id: str
    max_running: int | None = None
    submit_rate_per_s: float | None = None
    submit_burst: int | None = None


class WorkUnitSubmitted(Payload):
    """A tenant submitted a work unit; the unit starts ``queued`` at attempt 1."""

    kind: WorkUnitKind
    execution_session_id: str
    priority: Priority
    region: str | None = None
    payload: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None


class WorkUnitScheduled(Payload):
    """The scheduler placed a unit: ``node_id`` is the chosen node, ``offered_to`` the nodes
    that may claim it (the chosen one first), ``decision`` the scores and exclusions."""

    node_id: str
    offered_to: list[str]
    attempt: int
    decision: dict[str, Any] = Field(default_factory=dict)


class WorkUnitUnscheduled(Payload):
    """An offer was withdrawn before anyone claimed it (the node went away, was drained or
    quarantined, or the offer timed out); the unit is queued again at the same attempt."""

    node_id: str
    attempt: int
    reason: str


class WorkUnitClaimed(Payload):
    """A node claimed the unit for ``attempt``; the lease runs until ``lease_expires_at``."""

    node_id: str
    attempt: int
    lease_expires_at: datetime


class WorkUnitLeasesRenewed(Payload):
    """A heartbeat renewed the leases of the units a node holds."""

    node_id: str
    work_unit_ids: list[str]
    lease_expires_at: datetime


class CpuPricing(Payload):
    """The CPU price the control plane stamped into a billable event."""

    usd_per_cpu_s: str
    price_version: int


class TokenPricing(Payload):
    """The token price the control plane stamped into a billable event."""

    model: str
    usd_per_1m_in: str
    usd_per_1m_out: str
    price_version: int


class LlmInvocationCompleted(Payload):
    """One LLM call's telemetry. ``estimated_cost_usd`` is the agent's estimate (telemetry
    only); ``pricing`` is the control plane's price in force, the one that bills.
    ``stale_claim`` marks spend under a lost claim: platform cost, never billed to the tenant."""

    invocation_id: str
    node_id: str
    attempt: int
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    total_tokens: int
    latency_ms: int
    estimated_cost_usd: str
    pricing: TokenPricing
    stale_claim: bool = False


class LlmUsage(Payload):
    model: str
    tokens_in: int
    tokens_out: int
    pricing: TokenPricing


class WorkUnitCompleted(Payload):
    """The unit completed on ``node_id``. ``pricing`` is the CPU price in force;
    ``llm_usage`` sums the unit's accepted invocations (used only when LLM lines are billed
    from completions)."""

    node_id: str
    attempt: int
    cpu_ms: int
    result: Any = None
    pricing: CpuPricing
    llm_usage: list[LlmUsage] = Field(default_factory=list)


class WorkUnitFailed(Payload):
    """An attempt failed. ``requeued`` true: the unit is queued again at ``attempt + 1``;
    false: the unit is terminally ``failed``."""

    node_id: str | None = None
    attempt: int
    error: Any = None
    retryable: bool
    requeued: bool


class WorkUnitLeaseExpired(Payload):
    """The claim's lease ran out (or the node went away); requeued while attempts remain."""

    node_id: str
    attempt: int
    requeued: bool


class WorkUnitCancelled(Payload):
    """The unit was cancelled; a node that held it is told ``revoked`` at its next heartbeat."""

    attempt: int
    node_id: str | None = None
    by: str


class NodeRegistered(Payload):
    """A node registered, or re-registered after a restart (``restart`` true)."""

    node_id: str
    region: str | None
    supported_kinds: list[WorkUnitKind]
    max_concurrency: int
    labels: dict[str, str] = Field(default_factory=dict)
    restart: bool = False


class NodeDrained(Payload):
    node_id: str


class NodeHealthChanged(Payload):
    node_id: str
    from_: NodeHealth = Field(alias="from")
    to: NodeHealth
    reason: str
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TrustScoreChanged(Payload):
    node_id: str
    from_: float = Field(alias="from")
    to: float
    reason: str
    quarantined: bool
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CapacityScaleRequested(Payload):
    from_: int = Field(alias="from")
    to: int
    reason: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CapacityAdmissionModeChanged(Payload):
    from_: CapacityMode = Field(alias="from")
    to: CapacityMode
    reason: str
    source: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    ttl_s: float | None = None
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CapacityOverrideCleared(Payload):
    reason: str


class BillingPolicyChanged(Payload):
    """The billing flags and CPU rate in force from this event on."""

    bill_llm_from_workunit_completed: bool
    bill_llm_from_invocation: bool
    usd_per_cpu_s: str
    price_version: int


class BillingPriceChanged(Payload):
    """A model's token price, in force from this event on."""

    model: str
    usd_per_1m_in: str
    usd_per_1m_out: str
    price_version: int


class BillingBudgetSet(Payload):
    tenant_id: str
    budget_usd: str | None


class BillingBudgetRefused(Payload):
    """A submission was refused because the tenant's budget would be exceeded."""

    tenant_id: str
    budget_usd: str
    spent_usd: str
    committed_usd: str
    requested_usd: str


PAYLOADS: dict[EventType, type[Payload]] = {
    EventType.TENANT_CREATED: TenantCreated,
    EventType.TENANT_LIMITS_CHANGED: TenantLimitsChanged,
    EventType.WORKUNIT_SUBMITTED: WorkUnitSubmitted,
    EventType.WORKUNIT_SCHEDULED: WorkUnitScheduled,
    EventType.WORKUNIT_UNSCHEDULED: WorkUnitUnscheduled,
    EventType.WORKUNIT_CLAIMED: WorkUnitClaimed,
    EventType.WORKUNIT_LEASES_RENEWED: WorkUnitLeasesRenewed,
    EventType.LLM_INVOCATION_COMPLETED: LlmInvocationCompleted,
    EventType.WORKUNIT_COMPLETED: WorkUnitCompleted,
    EventType.WORKUNIT_FAILED: WorkUnitFailed,
    EventType.WORKUNIT_LEASE_EXPIRED: WorkUnitLeaseExpired,
    EventType.WORKUNIT_CANCELLED: WorkUnitCancelled,
    EventType.NODE_REGISTERED: NodeRegistered,
    EventType.NODE_DRAINED: NodeDrained,
    EventType.NODE_HEALTH_CHANGED: NodeHealthChanged,
    EventType.TRUST_SCORE_CHANGED: TrustScoreChanged,
    EventType.CAPACITY_SCALE_REQUESTED: CapacityScaleRequested,
    EventType.CAPACITY_ADMISSION_MODE_CHANGED: CapacityAdmissionModeChanged,
    EventType.CAPACITY_OVERRIDE_CLEARED: CapacityOverrideCleared,
    EventType.BILLING_POLICY_CHANGED: BillingPolicyChanged,
    EventType.BILLING_PRICE_CHANGED: BillingPriceChanged,
    EventType.BILLING_BUDGET_SET: BillingBudgetSet,
    EventType.BILLING_BUDGET_REFUSED: BillingBudgetRefused,
}


EVENT_TYPE_OF: dict[type[Payload], EventType] = {model: kind for kind, model in PAYLOADS.items()}
"""The event type each payload model is the payload of (each model belongs to one type)."""


def event_type_of(payload: Payload) -> EventType:
    """The event type of ``payload``, from its class (``KeyError`` for a class of no type)."""
    return EVENT_TYPE_OF[type(payload)]


def payload_type(event_type: str) -> type[Payload] | None:
    try:
        return PAYLOADS[EventType(event_type)]
    except ValueError:
        return None


class NewEvent(BaseModel):
    """An event to append. ``event_id`` makes the append idempotent."""

    event_id: str
    type: EventType
    tenant_id: str | None = None
    stream_id: str
    payload: Payload
    causation_id: str | None = None
    correlation_id: str | None = None


class Event(BaseModel):
    """A stored event, as the log and ``GET /v1/events`` return it."""

    seq: int = Field(description="Global position in the log, strictly increasing.")
    event_id: str
    type: str
    tenant_id: str | None
    stream_id: str
    payload: dict[str, Any]
    recorded_at: datetime
    causation_id: str | None = None
    correlation_id: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "seq": 42,
                    "event_id": "evt_01J9Z8K6Q4",
                    "type": "workunit.claimed",
                    "tenant_id": "ten_7f3a",
                    "stream_id": "wu_01J9Z8",
                    "payload": {
                        "node_id": "node-a",
                        "attempt": 1,
                        "lease_expires_at": "2026-11-27T12:00:30Z",
                    },
                    "recorded_at": "2026-11-27T12:00:00Z",
                    "causation_id": None,
                    "correlation_id": "session-1",
                }
            ]
        }
    )
