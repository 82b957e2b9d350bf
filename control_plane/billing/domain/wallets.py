"""Wallets: each tenant's spend by line-item type, folded from ledger lines.

A wallet's totals are sums of rounded line amounts, so they need no rounding of their own and
always equal what the tenant can add up line by line; ``total_usd`` is the sum of the totals.

``as_of_seq`` is the global seq of the last event folded into the wallet, that is the greatest
``source_seq`` of the tenant's lines. It depends only on the log, never on how the events were
batched, so a wallet rebuilt by replay equals the live one, and a consumer only rewrites the
wallets a batch touches. A tenant without lines has no wallet (``empty_wallet`` is its zero
form). To know whether a wallet includes a given event, compare the event's seq with the
billing consumer's checkpoint, not with ``as_of_seq``: an event that gives no line for the
tenant does not move it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from types import MappingProxyType

from control_plane.billing.domain.rules import EXACT, LedgerLine
from shared.enums import LineItemType
from shared.money import ZERO
from shared.wire import Wallet, WalletTotals

LINE_ITEM_TYPES: tuple[LineItemType, ...] = (LineItemType.WORKUNIT_CPU, LineItemType.LLM_TOKENS)


def _zero_totals() -> Mapping[LineItemType, Decimal]:
    return MappingProxyType(dict.fromkeys(LINE_ITEM_TYPES, ZERO))


@dataclass(frozen=True, slots=True)
class WalletState:
    """A tenant's wallet: totals by line-item type (both always present), as of a global seq."""

    tenant_id: str
    as_of_seq: int = 0
    totals: Mapping[LineItemType, Decimal] = field(default_factory=_zero_totals)

    def __post_init__(self) -> None:
        totals = dict.fromkeys(LINE_ITEM_TYPES, ZERO)
        for kind, amount in self.totals.items():
            totals[LineItemType(kind)] = amount
        object.__setattr__(self, "totals", MappingProxyType(totals))

    def __hash__(self) -> int:
        return hash((self.tenant_id, self.as_of_seq, tuple(self.totals.items())))

    @property
    def total_usd(self) -> Decimal:
        """The sum of the totals (itself a sum of rounded lines: exact, no rounding)."""
        with localcontext(EXACT):
            return sum(self.totals.values(), ZERO)

    def to_wire(self) -> Wallet:
        """The API form ``{tenant_id, as_of_seq, totals, total_usd}``."""
        return Wallet(
            tenant_id=self.tenant_id,
            as_of_seq=self.as_of_seq,
            totals=WalletTotals(
                workunit_cpu=self.totals[LineItemType.WORKUNIT_CPU],
                llm_tokens=self.totals[LineItemType.LLM_TOKENS],
            ),
            total_usd=self.total_usd,
        )

    @classmethod
    def from_wire(cls, wallet: Wallet) -> WalletState:
        return cls(
            tenant_id=wallet.tenant_id,
            as_of_seq=wallet.as_of_seq,
            totals={
                LineItemType.WORKUNIT_CPU: wallet.totals.workunit_cpu,
                LineItemType.LLM_TOKENS: wallet.totals.llm_tokens,
            },
        )


def empty_wallet(tenant_id: str) -> WalletState:
    """The wallet of a tenant that has no line yet: zero totals, ``as_of_seq`` 0."""
    return WalletState(tenant_id)


def fold_wallets(
    wallets: Mapping[str, WalletState], lines: Iterable[LedgerLine]
) -> dict[str, WalletState]:
    """Add ``lines`` to the wallets, returning new wallets (``wallets`` is not changed).

    Every wallet of ``wallets`` is in the result, plus one for each new tenant. Pass only lines
    that are new to the ledger: the fold adds what it is given (the projection, or the
    database's unique key on the line, is what keeps a line from being added twice).
    """
    with localcontext(EXACT):
        return _fold(wallets, lines)


def _fold(
    wallets: Mapping[str, WalletState], lines: Iterable[LedgerLine]
) -> dict[str, WalletState]:
    sums: dict[str, dict[LineItemType, Decimal]] = {}
    seqs: dict[str, int] = {}
    for line in lines:
        tenant_sums = sums.setdefault(line.tenant_id, {})
        kind = LineItemType(line.line_item_type)
        tenant_sums[kind] = tenant_sums.get(kind, ZERO) + line.amount_usd
        seqs[line.tenant_id] = max(seqs.get(line.tenant_id, 0), line.source_seq)
    result = dict(wallets)
    for tenant_id, added in sums.items():
        old = result.get(tenant_id) or empty_wallet(tenant_id)
        totals = dict(old.totals)
        for kind, amount in added.items():
            totals[kind] = totals[kind] + amount
        result[tenant_id] = WalletState(
            tenant_id=tenant_id,
            as_of_seq=max(old.as_of_seq, seqs[tenant_id]),
            totals=totals,
        )
    return result
