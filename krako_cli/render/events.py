"""Events: one line of explanation per event type, and the line ``krako watch`` prints.

``summarize`` is the one way Krako's clients put an event into words (the CLI and the demo
both use it). Payloads are read leniently (a missing key shows as None), so that a client
still shows a log written by an older or newer control plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text

from krako_cli.render.text import clock, compact
from shared.events import Event, EventType


def _p(event: Event, key: str, default: Any = None) -> Any:
    return event.payload.get(key, default)


def _on_node(event: Event) -> str:
    node = _p(event, "node_id")
    return f"on {node}" if node else ""


def _change(event: Event) -> str:
    return f"{_p(event, 'from')} -> {_p(event, 'to')}"


def _submitted(event: Event) -> str:
    return (
        f"{_p(event, 'kind')} {_p(event, 'priority')} session {_p(event, 'execution_session_id')}"
    )


def _scheduled(event: Event) -> str:
    offered = ", ".join(_p(event, "offered_to", []) or [])
    text = f"on {_p(event, 'node_id')} (attempt {_p(event, 'attempt')}, offered to {offered})"
    rule = (_p(event, "decision") or {}).get("rule")
    return f"{text}: {rule}" if rule else text


def _unscheduled(event: Event) -> str:
    return f"offer to {_p(event, 'node_id')} withdrawn: {_p(event, 'reason')}"


def _claimed(event: Event) -> str:
    return (
        f"by {_p(event, 'node_id')} (attempt {_p(event, 'attempt')}, lease until "
        f"{_p(event, 'lease_expires_at')})"
    )


def _leases_renewed(event: Event) -> str:
    units = _p(event, "work_unit_ids", []) or []
    return (
        f"{_p(event, 'node_id')} holds {len(units)}, leases until {_p(event, 'lease_expires_at')}"
    )


def _invocation(event: Event) -> str:
    stale = " (stale claim: platform cost)" if _p(event, "stale_claim") else ""
    return (
        f"{_p(event, 'provider')}/{_p(event, 'model')} {_p(event, 'tokens_in')}+"
        f"{_p(event, 'tokens_out')} tokens, {_p(event, 'latency_ms')} ms{stale}"
    )


def _completed(event: Event) -> str:
    return (
        f"on {_p(event, 'node_id')} (attempt {_p(event, 'attempt')}, {_p(event, 'cpu_ms')} ms cpu)"
    )


def _failed(event: Event) -> str:
    then = "requeued" if _p(event, "requeued") else "final"
    error = compact(_p(event, "error"), 120)
    return f"attempt {_p(event, 'attempt')} {_on_node(event)}, {then}: {error}"


def _lease_expired(event: Event) -> str:
    then = "requeued" if _p(event, "requeued") else "final"
    return f"{_p(event, 'node_id')} lost attempt {_p(event, 'attempt')}, {then}"


def _cancelled(event: Event) -> str:
    return f"by {_p(event, 'by')}"


def _tenant_created(event: Event) -> str:
    return f"{_p(event, 'name')}"


def _node_registered(event: Event) -> str:
    kinds = ",".join(_p(event, "supported_kinds", []) or [])
    again = " (restart)" if _p(event, "restart") else ""
    return (
        f"{kinds}, {_p(event, 'max_concurrency')} slots, region "
        f"{_p(event, 'region') or '(any)'}{again}"
    )


def _health_changed(event: Event) -> str:
    return f"{_change(event)}: {_p(event, 'reason')}"


def _trust_changed(event: Event) -> str:
    quarantined = ", quarantined" if _p(event, "quarantined") else ""
    return f"{_change(event)}: {_p(event, 'reason')}{quarantined}"


def _scale_requested(event: Event) -> str:
    return f"{_change(event)} nodes: {_p(event, 'reason')}"


def _mode_changed(event: Event) -> str:
    return f"{_change(event)} ({_p(event, 'source')}): {_p(event, 'reason')}"


def _override_set(event: Event) -> str:
    ttl = _p(event, "ttl_s")
    held = f" for {ttl} s" if ttl else " until cleared"
    return f"override {_p(event, 'mode')}{held}: {_p(event, 'reason')}"


def _override_cleared(event: Event) -> str:
    return f"override cleared: {_p(event, 'reason')}"


def _policy_changed(event: Event) -> str:
    sources = [
        name
        for name, on in (
            ("invocations", _p(event, "bill_llm_from_invocation")),
            ("completions", _p(event, "bill_llm_from_workunit_completed")),
        )
        if on
    ]
    return (
        f"{_p(event, 'usd_per_cpu_s')} USD per cpu-second, tokens billed from "
        f"{' and '.join(sources) or 'nothing'} (price v{_p(event, 'price_version')})"
    )


def _price_changed(event: Event) -> str:
    return (
        f"{_p(event, 'model')}: {_p(event, 'usd_per_1m_in')} in, {_p(event, 'usd_per_1m_out')} "
        f"out USD per 1M tokens (price v{_p(event, 'price_version')})"
    )


def _budget_set(event: Event) -> str:
    budget = _p(event, "budget_usd")
    return f"{_p(event, 'tenant_id')}: " + (f"{budget} USD" if budget is not None else "none")


def _budget_refused(event: Event) -> str:
    return (
        f"{_p(event, 'requested_usd')} USD more would pass the budget of "
        f"{_p(event, 'budget_usd')} (spent {_p(event, 'spent_usd')}, committed "
        f"{_p(event, 'committed_usd')})"
    )


#: one line of explanation per event type; others show their payload, compacted
SUMMARIES: dict[str, Callable[[Event], str]] = {
    EventType.WORKUNIT_SUBMITTED: _submitted,
    EventType.WORKUNIT_SCHEDULED: _scheduled,
    EventType.WORKUNIT_UNSCHEDULED: _unscheduled,
    EventType.WORKUNIT_CLAIMED: _claimed,
    EventType.WORKUNIT_LEASES_RENEWED: _leases_renewed,
    EventType.WORKUNIT_COMPLETED: _completed,
    EventType.WORKUNIT_FAILED: _failed,
    EventType.WORKUNIT_LEASE_EXPIRED: _lease_expired,
    EventType.WORKUNIT_CANCELLED: _cancelled,
    EventType.LLM_INVOCATION_COMPLETED: _invocation,
    EventType.TENANT_CREATED: _tenant_created,
    EventType.NODE_REGISTERED: _node_registered,
    EventType.NODE_HEALTH_CHANGED: _health_changed,
    EventType.TRUST_SCORE_CHANGED: _trust_changed,
    EventType.CAPACITY_SCALE_REQUESTED: _scale_requested,
    EventType.CAPACITY_ADMISSION_MODE_CHANGED: _mode_changed,
    EventType.CAPACITY_OVERRIDE_SET: _override_set,
    EventType.CAPACITY_OVERRIDE_CLEARED: _override_cleared,
    EventType.BILLING_POLICY_CHANGED: _policy_changed,
    EventType.BILLING_PRICE_CHANGED: _price_changed,
    EventType.BILLING_BUDGET_SET: _budget_set,
    EventType.BILLING_BUDGET_REFUSED: _budget_refused,
}


def summarize(event: Event) -> str:
    """One line about the event: its type's summary, or its payload compacted."""
    summary = SUMMARIES.get(event.type)
    return summary(event) if summary is not None else compact(event.payload, 160)


def event_line(event: Event) -> Text:
    """``#seq time type stream summary``: how ``krako watch`` shows an event."""
    line = Text()
    line.append(f"#{event.seq:<6} ", style="dim")
    line.append(clock(event.recorded_at) + " ", style="dim")
    line.append(f"{event.type:<26} ", style="bold")
    line.append(f"{event.stream_id} ", style="cyan")
    line.append(summarize(event))
    return line
