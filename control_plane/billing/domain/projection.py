"""The billing projection: a pure fold of the event log into policy, ledger and wallets.

``project(events, state)`` folds events in seq order. It is idempotent: an event whose seq is
not above ``state.last_seq`` was already folded and is skipped, as is a line whose key is
already in the ledger. So re-delivery, duplicates within a delivery, and stale re-deliveries
of earlier events all leave the state as it was; within one call, events are sorted by seq
first, so their order in the delivery does not matter either. (An event *never* seen whose seq
is below ``last_seq`` would be skipped too: the event log guarantees a consumer never sees
seq N+1 before N is committed, DESIGN.md invariant 6.)

Replay is the same fold from an empty state; folding from a snapshot (the state after N
events) and then the rest gives the same state as folding everything at once.

For a database consumer that keeps lines and wallets in tables, ``bill_events`` is the same
per-event step without the in-memory ledger: it returns the policy after the batch and the
candidate lines; insert them with the line key as a unique key and fold into the wallets only
the lines actually inserted (``wallets.fold_wallets``).

Billable events that cannot be priced (``InvalidBillableEvent``) give no line and are kept in
``rejected`` (the anomaly checker reports them); ``billing.policy.changed`` events that turn both
flags on are not applied and are kept in ``flag_conflicts``. Neither stops the fold: a
projection that halts on one bad event would stop billing everyone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from control_plane.billing.domain.canonical import digest, ledger_order
from control_plane.billing.domain.errors import InvalidBillableEvent
from control_plane.billing.domain.policy import (
    DEFAULT_POLICY,
    BillingPolicy,
    fold_policy,
    is_flag_conflict,
)
from control_plane.billing.domain.rules import LedgerLine, LineKey, lines_for_event
from control_plane.billing.domain.wallets import WalletState, empty_wallet, fold_wallets
from shared.events import LogEvent, Payload
from shared.wire import LedgerEntry, ReplayReport, Wallet


def _seq(event: LogEvent[Payload]) -> int:
    return event.seq


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``bill_events`` made of a batch: the policy after it, candidate lines in order, the
    seq of the last event folded, and the events it could not bill or apply."""

    policy: BillingPolicy
    lines: list[LedgerLine]
    last_seq: int
    events_folded: int
    rejected: dict[str, str]
    flag_conflicts: list[str]


def bill_events(
    policy: BillingPolicy, events: Iterable[LogEvent[Payload]], after_seq: int = 0
) -> BatchResult:
    """Fold events with seq above ``after_seq``, in seq order, each one seq at most once.

    Each event is billed under the policy in force before it, then folded into the policy.
    Lines are candidates: the caller drops those whose key it already has.
    """
    lines: list[LedgerLine] = []
    rejected: dict[str, str] = {}
    conflicts: list[str] = []
    last = after_seq
    folded = 0
    for event in sorted(events, key=_seq):
        if event.seq <= last:
            continue
        last = event.seq
        folded += 1
        try:
            lines.extend(lines_for_event(event, policy))
        except InvalidBillableEvent as exc:
            rejected[event.event_id] = exc.reason
        if is_flag_conflict(event):
            conflicts.append(event.event_id)
        policy = fold_policy(policy, event)
    return BatchResult(policy, lines, last, folded, rejected, conflicts)


def _empty_lines() -> Mapping[LineKey, LedgerLine]:
    return MappingProxyType({})


def _empty_wallets() -> Mapping[str, WalletState]:
    return MappingProxyType({})


def _empty_rejected() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class BillingState:
    """Billing folded from the log up to ``last_seq``: the policy in force, the ledger by line
    key, the wallets by tenant, and what could not be billed or applied."""

    policy: BillingPolicy = DEFAULT_POLICY
    lines: Mapping[LineKey, LedgerLine] = field(default_factory=_empty_lines)
    wallets: Mapping[str, WalletState] = field(default_factory=_empty_wallets)
    last_seq: int = 0
    events_folded: int = 0
    rejected: Mapping[str, str] = field(default_factory=_empty_rejected)
    flag_conflicts: tuple[str, ...] = ()

    def ledger(self) -> list[LedgerLine]:
        """The lines in canonical order, ``(source_seq, key)``."""
        return sorted(self.lines.values(), key=ledger_order)

    def wallet(self, tenant_id: str) -> WalletState:
        """The tenant's wallet (zero if it has no line)."""
        return self.wallets.get(tenant_id) or empty_wallet(tenant_id)

    def digest(self) -> str:
        """The digest of ledger and wallets (``canonical.digest``)."""
        return digest(self.lines.values(), self.wallets)


def project(events: Iterable[LogEvent[Payload]], state: BillingState | None = None) -> BillingState:
    """Fold ``events`` into ``state`` (an empty state if ``None``); ``state`` is not changed."""
    state = state if state is not None else BillingState()
    batch = bill_events(state.policy, events, state.last_seq)
    if batch.events_folded == 0:
        return state
    lines = dict(state.lines)
    new_lines: list[LedgerLine] = []
    for line in batch.lines:
        if line.key not in lines:
            lines[line.key] = line
            new_lines.append(line)
    rejected = dict(state.rejected)
    rejected.update(batch.rejected)
    return BillingState(
        policy=batch.policy,
        lines=MappingProxyType(lines),
        wallets=MappingProxyType(fold_wallets(state.wallets, new_lines)),
        last_seq=batch.last_seq,
        events_folded=state.events_folded + batch.events_folded,
        rejected=MappingProxyType(rejected),
        flag_conflicts=state.flag_conflicts + tuple(batch.flag_conflicts),
    )


def verify_replay(
    events: Iterable[LogEvent[Payload]],
    live_lines: Iterable[LedgerLine | LedgerEntry],
    live_wallets: Iterable[WalletState | Wallet] | Mapping[str, WalletState | Wallet],
    up_to_seq: int | None = None,
) -> ReplayReport:
    """Rebuild billing from ``events`` alone (only those with seq <= ``up_to_seq``, the live
    consumer's checkpoint, when given) and compare its digest with the live state's."""
    wanted = (e for e in events if up_to_seq is None or e.seq <= up_to_seq)
    replayed = project(wanted)
    live_digest = digest(live_lines, live_wallets)
    replay_digest = replayed.digest()
    return ReplayReport(
        identical=live_digest == replay_digest,
        live_digest=live_digest,
        replay_digest=replay_digest,
        events_replayed=replayed.events_folded,
        ledger_entries=len(replayed.lines),
    )
