"""One realistic payload of every event type (with an extra key where the control plane writes
one), for the codec's round-trip tests."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.enums import CapacityMode, Priority, WorkUnitKind
from shared.events import (
    BillingBudgetRefused,
    BillingBudgetSet,
    BillingPolicyChanged,
    BillingPriceChanged,
    CapacityAdmissionModeChanged,
    CapacityOverrideCleared,
    CapacityOverrideSet,
    CapacityScaleRequested,
    CpuPricing,
    EventType,
    LlmInvocationCompleted,
    LlmUsage,
    NodeDrained,
    NodeHealthChanged,
    NodeRegistered,
    Payload,
    TenantCreated,
    TenantLimitsChanged,
    TokenPricing,
    TrustScoreChanged,
    WorkUnitCancelled,
    WorkUnitClaimed,
    WorkUnitCompleted,
    WorkUnitFailed,
    WorkUnitLeaseExpired,
    WorkUnitLeasesRenewed,
    WorkUnitScheduled,
    WorkUnitSubmitted,
    WorkUnitUnscheduled,
)

LEASE = datetime(2026, 11, 27, 12, 0, 30, 123456, tzinfo=UTC)
TOKENS = TokenPricing(
    model="gpt-4o-mini", usd_per_1m_in="0.15", usd_per_1m_out="0.6", price_version=3
)

EXAMPLES: dict[EventType, Payload] = {
    EventType.TENANT_CREATED: TenantCreated(tenant_id="ten_1", name="Acme"),
    EventType.TENANT_LIMITS_CHANGED: TenantLimitsChanged(
        tenant_id="ten_1", max_running=4, submit_rate_per_s=2.5, submit_burst=None
    ),
    EventType.WORKUNIT_SUBMITTED: WorkUnitSubmitted(
        kind=WorkUnitKind.LLM_POD,
        execution_session_id="s-1",
        priority=Priority.P1,
        region="eu",
        payload={"prompt": "héllo", "model": "gpt-4o-mini", "max_tokens": 16, "n": [1, 2.5]},
        max_attempts=3,
        idempotency_key="k-1",
    ),
    EventType.WORKUNIT_SCHEDULED: WorkUnitScheduled(
        node_id="node-a",
        offered_to=["node-a", "node-b"],
        attempt=1,
        decision={"scores": {"node-a": 0.9, "node-b": 0.4}, "excluded": {}},
    ),
    EventType.WORKUNIT_UNSCHEDULED: WorkUnitUnscheduled(
        node_id="node-a", attempt=1, reason="offer timed out"
    ),
    EventType.WORKUNIT_CLAIMED: WorkUnitClaimed(
        node_id="node-a", attempt=1, lease_expires_at=LEASE
    ),
    EventType.WORKUNIT_LEASES_RENEWED: WorkUnitLeasesRenewed(
        node_id="node-a", work_unit_ids=["wu_1", "wu_2"], lease_expires_at=LEASE
    ),
    EventType.LLM_INVOCATION_COMPLETED: LlmInvocationCompleted(
        invocation_id="inv-1",
        node_id="node-a",
        attempt=1,
        provider="stub",
        model="gpt-4o-mini",
        tokens_in=1000,
        tokens_out=500,
        total_tokens=1500,
        latency_ms=12,
        estimated_cost_usd="0.000450",
        pricing=TOKENS,
        stale_claim=True,
    ),
    EventType.WORKUNIT_COMPLETED: WorkUnitCompleted(
        node_id="node-a",
        attempt=2,
        cpu_ms=1234,
        result={"text": "ok", "items": [None, True, 3]},
        pricing=CpuPricing(usd_per_cpu_s="0.00005", price_version=3),
        llm_usage=[LlmUsage(model="gpt-4o-mini", tokens_in=10, tokens_out=20, pricing=TOKENS)],
    ),
    EventType.WORKUNIT_FAILED: WorkUnitFailed(
        node_id="node-a",
        attempt=1,
        error={"type": "Boom", "message": "no"},
        retryable=True,
        requeued=True,
    ),
    EventType.WORKUNIT_LEASE_EXPIRED: WorkUnitLeaseExpired(
        node_id="node-a", attempt=1, requeued=False
    ),
    EventType.WORKUNIT_CANCELLED: WorkUnitCancelled(attempt=1, node_id=None, by="admin"),
    EventType.NODE_REGISTERED: NodeRegistered(
        node_id="node-a",
        region=None,
        supported_kinds=[WorkUnitKind.CPU, WorkUnitKind.LLM_POD],
        max_concurrency=8,
        labels={"gpu": "none"},
        restart=True,
    ),
    EventType.NODE_DRAINED: NodeDrained(node_id="node-a"),
    EventType.NODE_HEALTH_CHANGED: NodeHealthChanged.model_validate(
        {
            "node_id": "node-a",
            "from": "healthy",
            "to": "suspect",
            "reason": "no heartbeat for 12.0s",
            "heartbeat_age_s": 12.004,  # an extra key, as the sweep writes it
        }
    ),
    EventType.TRUST_SCORE_CHANGED: TrustScoreChanged(
        node_id="node-a", from_=0.8, to=0.72, reason="workunit.failed", quarantined=False
    ),
    EventType.CAPACITY_SCALE_REQUESTED: CapacityScaleRequested(
        from_=1, to=3, reason="queue depth", inputs={"queue_depth": {"p0": 5}, "replica": "h:1"}
    ),
    EventType.CAPACITY_ADMISSION_MODE_CHANGED: CapacityAdmissionModeChanged(
        from_=CapacityMode.OPEN,
        to=CapacityMode.THROTTLED,
        reason="manual",
        source="manual",
        inputs={},
        ttl_s=30.0,
    ),
    EventType.CAPACITY_OVERRIDE_SET: CapacityOverrideSet(
        mode=CapacityMode.OPEN, reason="pinned for the launch", ttl_s=3600.0
    ),
    EventType.CAPACITY_OVERRIDE_CLEARED: CapacityOverrideCleared(reason="override ttl expired"),
    EventType.BILLING_POLICY_CHANGED: BillingPolicyChanged(
        bill_llm_from_workunit_completed=False,
        bill_llm_from_invocation=True,
        usd_per_cpu_s="0.00005",
        price_version=1,
    ),
    EventType.BILLING_PRICE_CHANGED: BillingPriceChanged(
        model="llama-3-70b", usd_per_1m_in="0.59", usd_per_1m_out="0.79", price_version=2
    ),
    EventType.BILLING_BUDGET_SET: BillingBudgetSet(tenant_id="ten_1", budget_usd="10.000000"),
    EventType.BILLING_BUDGET_REFUSED: BillingBudgetRefused(
        tenant_id="ten_1",
        budget_usd="1.000000",
        spent_usd="0.900000",
        committed_usd="0.050000",
        requested_usd="0.100000",
    ),
}
