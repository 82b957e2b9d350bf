"""Request and reply models of the HTTP contract (API.md), shared by server and agent."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.enums import (
    CapacityMode,
    LineItemType,
    NodeHealth,
    Priority,
    WorkUnitKind,
    WorkUnitStatus,
)
from shared.events import Event
from shared.money import Money, Rate

T = TypeVar("T")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
"""A string the database stores the same way on every backend (no NUL characters)."""

MAX_WAIT_S = 30.0


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StrictWire(BaseModel):
    """Request bodies: unknown fields are refused so typos surface as 422."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- problems


class Problem(Wire):
    """RFC 9457 problem details with a stable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://krako.dev/problems/already_claimed",
                    "title": "Already claimed",
                    "status": 409,
                    "detail": "work unit wu_1 attempt 1 is already claimed by another node",
                    "code": "already_claimed",
                }
            ]
        },
    )


# --------------------------------------------------------------------------- tenants


class TenantCreate(StrictWire):
    """Create a tenant."""

    name: Text = Field(min_length=1, max_length=200, examples=["acme"])


class TenantCreated(Wire):
    """A new tenant and its API key (shown once; stored hashed)."""

    tenant_id: str
    name: str
    api_key: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"tenant_id": "ten_3f9c", "name": "acme", "api_key": "kt_…"}]
        }
    )


class Tenant(Wire):
    """A tenant."""

    tenant_id: str
    name: str

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tenant_id": "ten_3f9c", "name": "acme"}]}
    )


# --------------------------------------------------------------------------- work units

WORKUNIT_EXAMPLE: dict[str, Any] = {
    "id": "wu_01JC4X9W",
    "tenant_id": "ten_3f9c",
    "kind": "cpu",
    "execution_session_id": "session-1",
    "priority": "p1",
    "region": None,
    "payload": {"handler": "sha256", "args": {"data": "hello", "rounds": 1000}},
    "status": "completed",
    "attempt": 1,
    "max_attempts": 3,
    "node_id": "node-a",
    "result": {"digest": "9b71d2…"},
    "error": None,
    "created_at": "2026-11-27T12:00:00Z",
    "updated_at": "2026-11-27T12:00:01Z",
}


class WorkUnitSubmit(StrictWire):
    """Submit one work unit."""

    kind: WorkUnitKind
    execution_session_id: str = Field(min_length=1, max_length=200)
    priority: Priority = Priority.P1
    region: str | None = Field(default=None, max_length=100)
    payload: dict[str, Any]
    max_attempts: int = Field(default=3, ge=1, le=100)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "cpu",
                    "execution_session_id": "session-1",
                    "priority": "p1",
                    "payload": {"handler": "sha256", "args": {"data": "hello", "rounds": 1000}},
                }
            ]
        },
    )


class BatchItem(WorkUnitSubmit):
    """One unit of a batch submit, with its own optional idempotency key."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class BatchSubmit(StrictWire):
    """Up to 1000 units in one request."""

    units: list[Any] = Field(
        max_length=1000,
        description="Each item is a WorkUnitSubmit plus an optional idempotency_key; "
        "items are validated one by one so one bad item does not sink the batch.",
        examples=[[{"kind": "cpu", "execution_session_id": "s1", "payload": {"handler": "noop"}}]],
    )


class WorkUnit(Wire):
    """A work unit as the API returns it."""

    id: str
    tenant_id: str
    kind: WorkUnitKind
    execution_session_id: str
    priority: Priority
    region: str | None
    payload: dict[str, Any]
    status: WorkUnitStatus
    attempt: int
    max_attempts: int
    node_id: str | None
    result: Any = None
    error: Any = None
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(json_schema_extra={"examples": [WORKUNIT_EXAMPLE]})


class BatchResult(Wire):
    """The outcome of one batch item: the status it alone would get, and the unit or error."""

    status: int
    work_unit: WorkUnit | None = None
    error: Problem | None = None


class BatchReply(Wire):
    """Results in the order of the submitted units."""

    results: list[BatchResult]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"results": [{"status": 201, "work_unit": WORKUNIT_EXAMPLE}]}]
        }
    )


class Page(Wire, Generic[T]):
    """A page of a list; pass ``next_cursor`` back as ``cursor`` (null at the end)."""

    items: list[T]
    next_cursor: str | None = None


class WorkUnitEvents(Wire):
    """A unit's events in log order."""

    events: list[Event]


class ClaimRequest(StrictWire):
    """Claim the unit for ``attempt``."""

    attempt: int = Field(ge=1, examples=[1])


class ClaimReply(Wire):
    """A granted claim. ``claim_token`` goes with every report; ``attempt`` is the fencing token."""

    claim_token: str
    attempt: int
    lease_expires_at: datetime
    work_unit: WorkUnit

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "claim_token": "wu_01JC4X9W.1.c3f1…",
                    "attempt": 1,
                    "lease_expires_at": "2026-11-27T12:00:30Z",
                    "work_unit": WORKUNIT_EXAMPLE,
                }
            ]
        }
    )


class LlmInvocationReport(StrictWire):
    """Telemetry of one LLM call made for a claimed unit."""

    claim_token: str
    invocation_id: str = Field(min_length=1, max_length=200)
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=200)
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    latency_ms: int = Field(ge=0)
    estimated_cost_usd: Money

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "claim_token": "wu_01JC4X9W.1.c3f1…",
                    "invocation_id": "wu_01JC4X9W-1-0",
                    "provider": "stub",
                    "model": "gpt-4o-mini",
                    "tokens_in": 12,
                    "tokens_out": 24,
                    "total_tokens": 36,
                    "latency_ms": 3,
                    "estimated_cost_usd": "0.000016",
                }
            ]
        },
    )


class LlmInvocationAccepted(Wire):
    """The recorded invocation."""

    invocation_id: str
    work_unit_id: str
    seq: int
    pricing: dict[str, Any]


class CompleteRequest(StrictWire):
    """Report success."""

    claim_token: str
    result: Any = None
    cpu_ms: int = Field(default=0, ge=0)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"claim_token": "wu_01JC4X9W.1.c3f1…", "result": {"ok": True}, "cpu_ms": 12}
            ]
        },
    )


class FailRequest(StrictWire):
    """Report failure; ``retryable`` requeues while attempts remain."""

    claim_token: str
    error: Any = None
    retryable: bool = True

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"claim_token": "wu_01JC4X9W.1.c3f1…", "error": "boom", "retryable": True}]
        },
    )


# --------------------------------------------------------------------------- nodes


class NodeRegister(StrictWire):
    """Register (or re-register) a node with the join token."""

    node_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    supported_kinds: list[WorkUnitKind] = Field(min_length=1)
    region: Text | None = Field(default=None, max_length=100)
    max_concurrency: int = Field(ge=1, le=10_000)
    labels: dict[Text, Text] | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "node_id": "node-a",
                    "supported_kinds": ["cpu", "llm_pod"],
                    "region": "eu-west",
                    "max_concurrency": 4,
                }
            ]
        },
    )


class NodeRegistration(Wire):
    """The node's identity and timings; ``node_token`` authenticates it from now on."""

    node_id: str
    node_token: str
    heartbeat_interval_s: float
    lease_s: float

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "node_id": "node-a",
                    "node_token": "kn_…",
                    "heartbeat_interval_s": 5.0,
                    "lease_s": 30.0,
                }
            ]
        }
    )


class HeartbeatRequest(StrictWire):
    """What the node runs now."""

    running: list[str] = Field(default_factory=list, max_length=10_000)
    load: float | None = Field(default=None, ge=0)
    free_slots: int | None = Field(default=None, ge=0)

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"running": ["wu_1"]}]}
    )


class HeartbeatReply(Wire):
    """``revoked``: stop these units, their claim is gone."""

    capacity_mode: CapacityMode
    renewed: list[str]
    revoked: list[str]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"capacity_mode": "OPEN", "renewed": ["wu_1"], "revoked": []}]
        }
    )


class PollRequest(StrictWire):
    """Long-poll for work; ``claim: true`` claims in the same step."""

    max_units: int = Field(default=1, ge=1, le=1000)
    wait_s: float = Field(default=20.0, ge=0, le=MAX_WAIT_S)
    claim: bool = False

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"max_units": 4, "wait_s": 20, "claim": True}]},
    )


class PollReply(Wire):
    """Offered units (``claim`` false) or granted claims (``claim`` true)."""

    assignments: list[WorkUnit] = Field(default_factory=list)
    claims: list[ClaimReply] = Field(default_factory=list)


class Node(Wire):
    """A node as the registry sees it."""

    node_id: str
    region: str | None
    supported_kinds: list[WorkUnitKind]
    max_concurrency: int
    running: int
    health: NodeHealth
    trust: float
    drained: bool
    quarantined: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    last_heartbeat_at: datetime | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "node_id": "node-a",
                    "region": "eu-west",
                    "supported_kinds": ["cpu"],
                    "max_concurrency": 4,
                    "running": 1,
                    "health": "healthy",
                    "trust": 0.9,
                    "drained": False,
                    "quarantined": False,
                    "labels": {},
                    "last_heartbeat_at": "2026-11-27T12:00:00Z",
                }
            ]
        }
    )


# --------------------------------------------------------------------------- events


class EventsPage(Wire):
    """Events after ``after``; pass ``last_seq`` as the next ``after``."""

    events: list[Event]
    last_seq: int


# --------------------------------------------------------------------------- billing


class LedgerEntry(Wire):
    """One ledger line, keyed by the event that caused it."""

    entry_id: str
    source_event_id: str
    source_seq: int
    line_item_type: LineItemType
    tenant_id: str
    work_unit_id: str
    execution_session_id: str
    quantity: str
    unit: str
    pricing: dict[str, Any]
    amount_usd: Money
    recorded_at: datetime


class LedgerPage(Wire):
    """A page of ledger lines; pass ``next_cursor`` back as ``cursor`` (null at the end)."""

    entries: list[LedgerEntry]
    next_cursor: str | None = None


class WalletTotals(Wire):
    """Spend by line-item type (USD, 6 decimals)."""

    workunit_cpu: Money
    llm_tokens: Money


class Wallet(Wire):
    """A tenant's spend, current to the global seq ``as_of_seq``."""

    tenant_id: str
    as_of_seq: int
    totals: WalletTotals
    total_usd: Money


class ReplayReport(Wire):
    """Ledger and wallets rebuilt from the log alone, compared by digest with the live state."""

    identical: bool
    live_digest: str
    replay_digest: str
    events_replayed: int
    ledger_entries: int
    as_of_seq: int | None = Field(
        default=None,
        description="The billing consumer's checkpoint both sides were compared at: the live "
        "state and the replay of every event up to this seq.",
    )
    from_snapshot_seq: int | None = Field(
        default=None,
        description="With from_snapshot=true: the checkpoint of the wallet snapshot the replay "
        "started from (events_replayed counts only the events after it); null when the replay "
        "started from the first event.",
    )
    jsonl_sink: Literal["identical", "rebuilt"] | None = Field(
        default=None,
        description="With KRAKO_LEDGER_JSONL_PATH set: 'identical' when the JSONL file already "
        "equalled the replayed ledger's canonical JSONL, 'rebuilt' when it was rewritten; null "
        "without a sink.",
    )


class Anomaly(Wire):
    """One thing wrong (or worth knowing) about the ledger."""

    kind: str
    detail: str
    source_event_id: str | None = None
    work_unit_id: str | None = None


class AnomalyReport(Wire):
    """Every anomaly the checker found."""

    anomalies: list[Anomaly]


# --------------------------------------------------------------------------- capacity


class CapacityReport(Wire):
    """The admission mode in force, the fleet, queue depth by priority, and the autoscaler's
    last decision."""

    mode: CapacityMode
    desired_nodes: int
    healthy_nodes: int
    queue_depth: dict[str, int]
    running: int
    utilization: float
    last_decision: dict[str, Any] | None = None


class CapacityModeRequest(StrictWire):
    """A manual override of the admission mode, for ``ttl_s`` seconds or until cleared."""

    mode: CapacityMode
    reason: str = Field(min_length=1, max_length=500)
    ttl_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"mode": "THROTTLED", "reason": "maintenance window", "ttl_s": 600}]
        },
    )


class TenantLimits(StrictWire):
    """Per-tenant limits (null: unlimited)."""

    max_running: int | None = Field(default=None, ge=1)
    submit_rate_per_s: float | None = Field(default=None, gt=0)
    submit_burst: int | None = Field(default=None, ge=1)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"max_running": 50, "submit_rate_per_s": 100, "submit_burst": 200}]
        },
    )


class ModelPriceRequest(StrictWire):
    """A model's token rates (USD per one million tokens), as decimal strings."""

    usd_per_1m_in: Rate
    usd_per_1m_out: Rate

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"usd_per_1m_in": "0.15", "usd_per_1m_out": "0.60"}]},
    )


class PriceTableReply(Wire):
    """The control plane's price table in force."""

    price_version: int
    usd_per_cpu_s: str
    models: dict[str, dict[str, str]]


class BudgetRequest(StrictWire):
    """A tenant's budget in USD (null removes it)."""

    budget_usd: Money | None

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"budget_usd": "5.000000"}]}
    )


class BudgetReply(Wire):
    """A tenant's budget, what it has spent and what its queued and running work may cost."""

    tenant_id: str
    budget_usd: Money | None
    spent_usd: Money
    committed_usd: Money


class CompletionReport(CompleteRequest):
    """One completion in a batch report."""

    work_unit_id: str


class FailureReport(FailRequest):
    """One failure in a batch report."""

    work_unit_id: str


class ReportsRequest(StrictWire):
    """Several reports of one node in one request (the agent's fast path)."""

    completions: list[CompletionReport] = Field(default_factory=list, max_length=1000)
    failures: list[FailureReport] = Field(default_factory=list, max_length=1000)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "completions": [
                        {"work_unit_id": "wu_1", "claim_token": "wu_1.1.ab…", "cpu_ms": 3}
                    ],
                    "failures": [],
                }
            ]
        },
    )


class ReportResult(Wire):
    """The outcome of one report: the HTTP status its single-unit route would give."""

    status: int
    work_unit: WorkUnit | None = None
    error: Problem | None = None


class ReportsReply(Wire):
    """Outcomes in the order of the request."""

    completions: list[ReportResult]
    failures: list[ReportResult]
