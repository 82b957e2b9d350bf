"""Billing: the pure core of the ledger, wallets, prices, anomalies and budgets.

Everything here is a pure function of events (no I/O, no database, no clock, no settings); the
control plane wires it into a consumer that stores lines and wallets with its checkpoint.

Modules:

- ``pricing``: the versioned ``PriceTable`` and the ``pricing`` stamps put into events;
- ``policy``: the billing flags in force, folded from ``billing.policy.changed``;
- ``rules``: the ledger lines an event gives, and the one rounding rule;
- ``wallets``: per-tenant totals folded from lines;
- ``projection``: the whole fold (``project``), the per-batch step (``bill_events``), replay
  verification;
- ``canonical``: canonical JSONL of ledger and wallets, and their digest;
- ``anomalies``: what is wrong with a ledger given the log;
- ``budgets``: budget admission and cost estimates;
- ``errors``: the exception tree.
"""

from __future__ import annotations

from control_plane.billing.domain.anomalies import find_anomalies, platform_cost_total
from control_plane.billing.domain.canonical import (
    canonical_line,
    canonical_wallet,
    digest,
    ledger_jsonl,
    wallets_jsonl,
)
from control_plane.billing.domain.errors import (
    BillingError,
    BillingFlagsError,
    InvalidBillableEvent,
    PriceTableError,
)
from control_plane.billing.domain.estimates import budget_check, estimate_unit_cost
from control_plane.billing.domain.policy import (
    DEFAULT_POLICY,
    BillingPolicy,
    fold_policy,
    policy_changed_payload,
    validate_flags,
)
from control_plane.billing.domain.pricing import (
    ModelPrice,
    PriceTable,
    apply_price_event,
    cpu_stamp,
    default_price_table,
    price_changed_payload,
    token_stamp,
)
from control_plane.billing.domain.projection import (
    BatchResult,
    BillingState,
    bill_events,
    project,
    verify_replay,
)
from control_plane.billing.domain.rules import LedgerLine, LineKey, lines_for_event
from control_plane.billing.domain.wallets import WalletState, empty_wallet, fold_wallets

__all__ = [
    "DEFAULT_POLICY",
    "BatchResult",
    "BillingError",
    "BillingFlagsError",
    "BillingPolicy",
    "BillingState",
    "InvalidBillableEvent",
    "LedgerLine",
    "LineKey",
    "ModelPrice",
    "PriceTable",
    "PriceTableError",
    "WalletState",
    "apply_price_event",
    "bill_events",
    "budget_check",
    "canonical_line",
    "canonical_wallet",
    "cpu_stamp",
    "default_price_table",
    "digest",
    "empty_wallet",
    "estimate_unit_cost",
    "find_anomalies",
    "fold_policy",
    "fold_wallets",
    "ledger_jsonl",
    "lines_for_event",
    "platform_cost_total",
    "policy_changed_payload",
    "price_changed_payload",
    "project",
    "token_stamp",
    "validate_flags",
    "verify_replay",
    "wallets_jsonl",
]
