"""The anomaly checker: compares a ledger with what the event log says it should hold.

It replays billing from the events (``projection.project``) and reports, as
``shared.wire.Anomaly`` (``kind``, ``detail``, ``source_event_id``, ``work_unit_id``):

================== =========================================================================
kind               meaning
================== =========================================================================
missing_line       the log calls for a line the ledger lacks (a completed unit without its
                   ``workunit_cpu`` line, an invocation without its ``llm_tokens`` line)
orphan_line        a line whose source event is not in the log
duplicate_line     two or more lines with the same key (or the same ``entry_id``)
unexpected_line    a line from a log event that calls for none under the policy in force
                   (for example a billed stale-claim invocation)
line_mismatch      a line that differs from its replayed form (amount, tenant, pricing...)
invalid_amount     an amount that is negative, not exactly 6 decimals, or not what the line's
                   own quantity and pricing give
unbillable_event   a billable event that cannot be priced (no pricing stamp, bad counts...)
platform_cost      an invocation under a lost claim: spend that is not billed to the tenant;
                   the detail says what it would have cost
flag_misconfiguration  a ``billing.policy.changed`` with both LLM flags on (not applied), or
                   both flags on in the settings (``policy_flags_conflict``)
================== =========================================================================

Results are sorted by ``(kind, source_event_id, work_unit_id, detail)`` so the report is stable.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

from control_plane.billing.domain.canonical import canonical_line
from control_plane.billing.domain.errors import InvalidBillableEvent
from control_plane.billing.domain.projection import project
from control_plane.billing.domain.rules import (
    LedgerLine,
    LineKey,
    invocation_line,
    is_stale_claim,
    line_key,
    recompute_amount,
)
from shared.events import EventType, LogEvent, Payload
from shared.money import ZERO, format_usd
from shared.wire import Anomaly, LedgerEntry


def _describe(key: LineKey) -> str:
    source, kind, sub = key
    return f"{kind} line of event {source}" + (f" ({sub})" if sub else "")


def _stale_invocations(events: Iterable[LogEvent[Payload]]) -> list[LogEvent[Payload]]:
    stale = []
    for event in events:
        if event.type != EventType.LLM_INVOCATION_COMPLETED:
            continue
        try:
            if is_stale_claim(event):
                stale.append(event)
        except InvalidBillableEvent:
            continue  # reported as unbillable_event
    return stale


def platform_cost_total(events: Iterable[LogEvent[Payload]]) -> Decimal:
    """What the stale-claim invocations of ``events`` cost the platform (at their stamped
    prices; invocations that cannot be priced count zero)."""
    total = ZERO
    seen: set[str] = set()
    for event in _stale_invocations(events):
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        try:
            total += invocation_line(event).amount_usd
        except InvalidBillableEvent:
            continue
    return total


def _amount_problem(line: LedgerLine | LedgerEntry) -> str | None:
    amount = line.amount_usd
    if not amount.is_finite():
        return f"amount {amount} is not finite"
    if amount < 0:
        return f"amount {amount} is negative"
    if amount.as_tuple().exponent != -6:
        return f"amount {amount} does not have exactly 6 decimals"
    try:
        expected = recompute_amount(line)
    except ValueError as exc:
        return f"amount cannot be recomputed from the line itself: {exc}"
    if expected != amount:
        return f"amount {amount} differs from {format_usd(expected)} given by its own pricing"
    return None


def _differences(actual: LedgerLine | LedgerEntry, expected: LedgerLine) -> list[str]:
    got, wanted = canonical_line(actual), canonical_line(expected)
    if got == wanted:
        return []
    got_fields, wanted_fields = json.loads(got), json.loads(wanted)
    return sorted(name for name in wanted_fields if got_fields.get(name) != wanted_fields[name])


def find_anomalies(
    events: Iterable[LogEvent[Payload]],
    lines: Iterable[LedgerLine | LedgerEntry],
    policy_flags_conflict: bool = False,
) -> list[Anomaly]:
    """Everything wrong with ``lines`` as the ledger of the log ``events`` (see the module
    docstring for the kinds). ``policy_flags_conflict``: both flags are on in the settings."""
    events = list(events)
    lines = list(lines)
    found: list[Anomaly] = []

    def report(
        kind: str, detail: str, source_event_id: str | None = None, work_unit_id: str | None = None
    ) -> None:
        found.append(
            Anomaly(
                kind=kind, detail=detail, source_event_id=source_event_id, work_unit_id=work_unit_id
            )
        )

    by_id: dict[str, LogEvent[Payload]] = {}
    for event in sorted(events, key=lambda e: e.seq):
        by_id.setdefault(event.event_id, event)
    replayed = project(by_id.values())
    expected = replayed.lines

    keys = Counter(line_key(line) for line in lines)
    entry_ids = Counter(line.entry_id for line in lines)
    reported_dup: set[LineKey] = set()
    for line in lines:
        key = line_key(line)
        if (keys[key] > 1 or entry_ids[line.entry_id] > 1) and key not in reported_dup:
            reported_dup.add(key)
            report(
                "duplicate_line",
                f"{_describe(key)} appears {keys[key]} times"
                + (
                    f"; entry_id {line.entry_id} {entry_ids[line.entry_id]} times"
                    if entry_ids[line.entry_id] > 1
                    else ""
                ),
                line.source_event_id,
                line.work_unit_id,
            )
        problem = _amount_problem(line)
        if problem is not None:
            report(
                "invalid_amount",
                f"{_describe(key)}: {problem}",
                line.source_event_id,
                line.work_unit_id,
            )
        if line.source_event_id not in by_id:
            report(
                "orphan_line",
                f"{_describe(key)}: no such event in the log",
                line.source_event_id,
                line.work_unit_id,
            )
        elif key not in expected:
            report(
                "unexpected_line",
                f"{_describe(key)}: the log calls for no such line under the policy in force",
                line.source_event_id,
                line.work_unit_id,
            )
        else:
            differences = _differences(line, expected[key])
            if differences:
                report(
                    "line_mismatch",
                    f"{_describe(key)} differs from its replay in: {', '.join(differences)}",
                    line.source_event_id,
                    line.work_unit_id,
                )

    for key, line in expected.items():
        if key not in keys:
            what = (
                "completed unit has no workunit_cpu line"
                if line.line_item_type == "workunit_cpu"
                else f"no {_describe(key)}"
            )
            report(
                "missing_line",
                f"{line.work_unit_id}: {what}",
                line.source_event_id,
                line.work_unit_id,
            )

    for event_id, reason in replayed.rejected.items():
        event = by_id[event_id]
        report("unbillable_event", f"{event.type} {event_id}: {reason}", event_id, event.stream_id)

    for event in _stale_invocations(by_id.values()):
        try:
            would = invocation_line(event)
        except InvalidBillableEvent as exc:
            report(
                "platform_cost",
                f"stale-claim invocation of {event.stream_id}, not billed; cannot price it:"
                f" {exc.reason}",
                event.event_id,
                event.stream_id,
            )
            continue
        report(
            "platform_cost",
            f"stale-claim invocation of {event.stream_id} ({would.quantity} tokens of "
            f"{would.pricing['model']}): {format_usd(would.amount_usd)} USD platform cost, "
            "not billed to the tenant",
            event.event_id,
            event.stream_id,
        )

    for event_id in replayed.flag_conflicts:
        report(
            "flag_misconfiguration",
            f"billing.policy.changed {event_id} turns both LLM billing flags on (or is "
            "malformed); it was not applied, the previous policy stayed in force",
            event_id,
        )
    if policy_flags_conflict:
        report(
            "flag_misconfiguration",
            "KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED and KRAKO_BILL_LLM_FROM_INVOCATION are "
            "both on: every LLM token would be billed twice",
        )

    return sorted(
        found, key=lambda a: (a.kind, a.source_event_id or "", a.work_unit_id or "", a.detail)
    )
