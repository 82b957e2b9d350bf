"""The billing package's exceptions, one tree with a stable ``code`` each::

    BillingError               "billing_error"
     ├── BillingFlagsError     "billing_flags_conflict"   both LLM billing flags on
     ├── InvalidBillableEvent  "invalid_billable_event"   a billable event that cannot be priced
     └── PriceTableError       "invalid_price"            a bad rate or model name

None of them is ``retryable``: they describe data or configuration, which a retry does not change.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base of every billing error."""

    code = "billing_error"
    retryable = False


class BillingFlagsError(BillingError, ValueError):
    """Both ``bill_llm_from_workunit_completed`` and ``bill_llm_from_invocation`` are on, which
    would bill every LLM token twice."""

    code = "billing_flags_conflict"


class InvalidBillableEvent(BillingError, ValueError):
    """A ``workunit.completed`` or ``llm.invocation.completed`` event lacks what its line needs
    (a tenant, a pricing stamp, non-negative integer counts, decimal-string rates)."""

    code = "invalid_billable_event"

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(f"event {event_id} cannot be billed: {reason}")
        self.event_id = event_id
        self.reason = reason


class PriceTableError(BillingError, ValueError):
    """A price that is not a finite, non-negative decimal string, or an empty model name."""

    code = "invalid_price"
