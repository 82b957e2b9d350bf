"""Every event type of the log and its payload schema: the one place that lists them.

An event is an envelope (``seq``, ``event_id``, ``type``, ``tenant_id``, ``stream_id``,
``payload``, ``recorded_at``, ``causation_id``, ``correlation_id``) around a payload whose
schema is fixed by its type. ``PAYLOADS`` maps each type name to its payload model (one model
per type, so the model's class names the type: ``EVENT_TYPE_OF``). Payload models allow extra
keys so that a reader built against an older schema can still read a newer log.

Three shapes of an event:

- ``NewEvent``: an event to append, its payload a model (built by ``eventlog.emit``);
- ``LogEvent[P]``: a stored event as the control plane reads it, its payload validated into its
  model ``P`` (readers narrow it with ``isinstance``/``match`` on the payload's class);
- ``Event``: the wire form ``GET /v1/events`` returns, its payload a plain JSON object.

``TaggedPayload`` is the pydantic discriminated union of every payload model, keyed by the
event type: it validates ``{"type": <event type>, "payload": {...}}`` into the model of that
type in one pass (``control_plane.eventlog.codec`` holds its ``TypeAdapter``). A row whose type
this reader does not know reads as an ``UnknownPayload``; one whose payload does not validate
against its model as an ``UnreadablePayload`` (with the reason), so a reader of a batch never
fails on one bad row and decides itself what a bad row means to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, cast

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

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
    CAPACITY_OVERRIDE_SET = "capacity.override.set"
    CAPACITY_OVERRIDE_CLEARED = "capacity.override.cleared"
    BILLING_POLICY_CHANGED = "billing.policy.changed"
    BILLING_PRICE_CHANGED = "billing.price.changed"
    BILLING_BUDGET_SET = "billing.budget.set"
    BILLING_BUDGET_REFUSED = "billing.budget.refused"


class Payload(BaseModel):
    """Base of every payload model."""

    model_config = ConfigDict(extra="allow")

    def to_json_object(self) -> dict[str, Any]:
        """The payload as the JSON object the log stores (field aliases such as ``from``)."""
        return self.model_dump(mode="json", by_alias=True)


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
    execution_session_id: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """The unit's session, for a log whose envelope carries no ``correlation_id`` (billing
    falls back to it); the control plane puts the session in ``correlation_id`` instead."""


class LlmUsage(Payload):
    """One model's tokens in a unit's ``llm_usage``, with the price in force when it ran."""

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
    execution_session_id: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """As ``LlmInvocationCompleted.execution_session_id``."""


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
    """An admin drained the node: it gets no new work (what it holds runs to the end)."""

    node_id: str


class NodeHealthChanged(Payload):
    """The node's health, derived from heartbeat freshness, moved ``from`` one value ``to``
    another."""

    node_id: str
    from_: NodeHealth = Field(alias="from")
    to: NodeHealth
    reason: str
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TrustScoreChanged(Payload):
    """The node's trust score moved enough to report (or its quarantine flipped); ``reason``
    is the event type that moved it, or ``probation`` / ``manual`` for a change that is not
    derived from other events (replay adopts those)."""

    node_id: str
    from_: float = Field(alias="from")
    to: float
    reason: str
    quarantined: bool
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CapacityScaleRequested(Payload):
    """The autoscaler asked for a different node count; ``inputs`` are the metrics behind it."""

    from_: int = Field(alias="from")
    to: int
    reason: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CapacityAdmissionModeChanged(Payload):
    """The admission mode changed (``source`` autoscaler or manual; a manual override may
    carry a ``ttl_s``)."""

    from_: CapacityMode = Field(alias="from")
    to: CapacityMode
    reason: str
    source: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    ttl_s: float | None = None
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CapacityOverrideSet(Payload):
    """A manual mode override began (``PUT /v1/capacity/mode``): the mode is pinned for
    ``ttl_s`` (``None``: until cleared). Recorded whether or not the mode changed; a change
    also appends its own ``capacity.admission.mode.changed``."""

    mode: CapacityMode
    reason: str
    ttl_s: float | None = None


class CapacityOverrideCleared(Payload):
    """A manual mode override ended (cleared by an admin, or its TTL ran out)."""

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
    """An admin set (or, with ``None``, removed) a tenant's budget."""

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
    EventType.CAPACITY_OVERRIDE_SET: CapacityOverrideSet,
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


class UnknownPayload(Payload):
    """The payload of an event type this reader does not know (a log written by a newer
    version): kept as read, never validated. No reader acts on it; it has no event type of its
    own, so it can never be appended."""

    raw: dict[str, Any]

    def to_json_object(self) -> dict[str, Any]:
        return self.raw


class UnreadablePayload(Payload):
    """A stored payload that does not validate against its type's model: ``raw`` is what was
    read (the parsed JSON, or the text when it is not JSON), ``error`` says why it does not
    validate. The reader that needs the event decides what that means (billing reports an
    unreadable billable event as ``unbillable_event``). It can never be appended."""

    raw: Any
    error: str

    def to_json_object(self) -> dict[str, Any]:
        return self.raw if isinstance(self.raw, dict) else {}


def _tagged(event_type: EventType, model: type[Payload]) -> Any:
    # One member of the union: {"type": <this event type>, "payload": <its model>}. A TypedDict,
    # not a model, so that validating through it costs nothing beyond the payload itself.
    literal = cast(Any, Literal)[event_type.value]
    return cast(Any, TypedDict)(f"{model.__name__}Tagged", {"type": literal, "payload": model})


TaggedPayload: Any = cast(Any, Annotated)[
    cast(Any, Union)[tuple(_tagged(kind, model) for kind, model in PAYLOADS.items())],
    Field(discriminator="type"),
]
"""The discriminated union of every payload model, keyed by the event type: validates
``{"type": "workunit.completed", "payload": {...}}`` into ``{"type": ..., "payload":
WorkUnitCompleted(...)}``, dispatching on ``type`` in pydantic-core (one validation, of that
type's model only). Built from ``PAYLOADS``, so a new event type is in it by construction."""


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


P_co = TypeVar("P_co", bound=Payload, covariant=True)
P = TypeVar("P", bound=Payload)


@dataclass(frozen=True, slots=True)
class LogEvent(Generic[P_co]):
    """A stored event as the control plane reads it: the envelope of ``Event``, with the
    payload validated into its model (``LogEvent[WorkUnitCompleted]``; readers of mixed events
    take ``LogEvent[Payload]`` and narrow on the payload's class). A row of a type this version
    does not know has an ``UnknownPayload``; one whose payload does not validate an
    ``UnreadablePayload``. ``type`` is the stored type name (a plain string, since a newer log
    may hold types this version does not know).

    Built by ``control_plane.eventlog.codec`` from a row (one validation) and by ``append`` from
    the model it was given (none); ``of`` builds one from a payload (tests, pure callers).
    ``to_wire`` gives the ``Event`` of ``GET /v1/events``.
    """

    seq: int
    event_id: str
    type: str
    tenant_id: str | None
    stream_id: str
    payload: P_co
    recorded_at: datetime
    causation_id: str | None = None
    correlation_id: str | None = None

    @staticmethod
    def of(
        payload: P,
        *,
        seq: int,
        event_id: str,
        stream_id: str,
        recorded_at: datetime,
        tenant_id: str | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> LogEvent[P]:
        """The stored event of ``payload``, its type derived from the payload's class."""
        return LogEvent(
            seq=seq,
            event_id=event_id,
            type=event_type_of(payload).value,
            tenant_id=tenant_id,
            stream_id=stream_id,
            payload=payload,
            recorded_at=recorded_at,
            causation_id=causation_id,
            correlation_id=correlation_id,
        )

    def to_wire(self) -> Event:
        """The wire form: the same envelope, the payload as the JSON object the log stores
        (for an event this version wrote, exactly the stored one)."""
        return Event.model_construct(
            seq=self.seq,
            event_id=self.event_id,
            type=self.type,
            tenant_id=self.tenant_id,
            stream_id=self.stream_id,
            payload=self.payload.to_json_object(),
            recorded_at=self.recorded_at,
            causation_id=self.causation_id,
            correlation_id=self.correlation_id,
        )
