"""The billing flags in force, folded from ``billing.policy.changed`` events.

Two flags choose where LLM tokens are billed from, so that they are never billed twice:

- ``bill_llm_from_invocation`` (default on): one ``llm_tokens`` line per accepted
  ``llm.invocation.completed``;
- ``bill_llm_from_workunit_completed`` (default off): one ``llm_tokens`` line per ``llm_usage``
  entry of ``workunit.completed``.

Both on would bill every token twice: ``BillingPolicy`` refuses it with ``BillingFlagsError``.
Both off is allowed (LLM tokens are not billed at all).

The flags in force are those of the last ``billing.policy.changed`` event before the event being
billed, or the defaults before the first one; projection never reads them from the current
settings (DESIGN.md, invariant 3). The log is immutable, so a policy event that has both flags
on cannot be refused once written: ``fold_policy`` leaves the policy in force unchanged (the
change is not applied) and the anomaly checker reports it as ``flag_misconfiguration``. The
control plane should never write one: ``policy_changed_payload`` validates first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from control_plane.billing.domain.errors import BillingFlagsError
from control_plane.billing.domain.pricing import PriceTable, rate_str
from shared.events import BillingPolicyChanged, EventType, LogEvent, Payload


def validate_flags(bill_llm_from_workunit_completed: bool, bill_llm_from_invocation: bool) -> None:
    """Raise ``BillingFlagsError`` when both flags are on."""
    if bill_llm_from_workunit_completed and bill_llm_from_invocation:
        raise BillingFlagsError(
            "bill_llm_from_workunit_completed and bill_llm_from_invocation are both on, which "
            "would bill every LLM token twice; turn one of them off "
            "(KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED / KRAKO_BILL_LLM_FROM_INVOCATION)"
        )


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """Where LLM tokens are billed from. Construction refuses both flags on."""

    bill_llm_from_workunit_completed: bool = False
    bill_llm_from_invocation: bool = True

    def __post_init__(self) -> None:
        validate_flags(self.bill_llm_from_workunit_completed, self.bill_llm_from_invocation)


DEFAULT_POLICY = BillingPolicy()
"""The policy in force before the first ``billing.policy.changed`` event."""


def policy_from_event(event: LogEvent[Payload]) -> BillingPolicy | None:
    """The policy a ``billing.policy.changed`` event sets, or ``None`` if the event is of
    another type, malformed (its payload did not validate: flags that are not booleans...), or
    turns both flags on (a change that is never applied)."""
    payload = event.payload
    if not isinstance(payload, BillingPolicyChanged):
        return None
    from_completed = payload.bill_llm_from_workunit_completed
    from_invocation = payload.bill_llm_from_invocation
    if from_completed and from_invocation:
        return None
    return BillingPolicy(from_completed, from_invocation)


def is_flag_conflict(event: LogEvent[Payload]) -> bool:
    """Whether ``event`` is a ``billing.policy.changed`` that could not be applied: both flags
    on, or flags that are not booleans."""
    if event.type != EventType.BILLING_POLICY_CHANGED:
        return False
    return policy_from_event(event) is None


def fold_policy(policy: BillingPolicy, event: LogEvent[Payload]) -> BillingPolicy:
    """The policy in force after ``event``: the one it sets if it is a valid
    ``billing.policy.changed``, else ``policy`` unchanged."""
    new = policy_from_event(event)
    return policy if new is None else new


def policy_changed_payload(policy: BillingPolicy, table: PriceTable) -> dict[str, Any]:
    """The payload of a ``billing.policy.changed`` event recording ``policy`` and the CPU rate
    of ``table`` (the control plane appends it at start when they differ from the log's)."""
    validate_flags(policy.bill_llm_from_workunit_completed, policy.bill_llm_from_invocation)
    return {
        "bill_llm_from_workunit_completed": policy.bill_llm_from_workunit_completed,
        "bill_llm_from_invocation": policy.bill_llm_from_invocation,
        "usd_per_cpu_s": rate_str(table.usd_per_cpu_s),
        "price_version": table.price_version,
    }
