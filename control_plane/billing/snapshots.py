"""Wallet snapshots: every wallet and the policy in force, as of a billing-consumer checkpoint.

The billing consumer stores one in the same transaction as the batch that takes its checkpoint
``every`` events (seqs) or more past the latest snapshot (``snapshot_due``), so a snapshot is
exactly the state the consumer committed at that seq. Replay can then start from the latest
snapshot and fold only the events after it (``control_plane.billing.replay``).

A snapshot's ``state`` is canonical JSON (sorted keys, no whitespace, money as 6-decimal
strings)::

    {"as_of_seq": 1200, "format": 1,
     "policy": {"bill_llm_from_invocation": true, "bill_llm_from_workunit_completed": false},
     "wallets": [<canonical wallet objects, by tenant_id>]}

``as_of_seq`` (also the row's key) is the consumer checkpoint, not a wallet's own ``as_of_seq``
(the seq of its last line). Only the latest ``KEEP`` snapshots are kept.

The interval comes from ``KRAKO_WALLET_SNAPSHOT_EVERY``: the control plane builds its
``Database`` with it (``Database.snapshot_every``); the consumer reads it through its unit of
work, so every path that folds events (the loop, replay's catch-up, budget admission) takes
snapshots at the same cadence. A database built without one uses ``DEFAULT_EVERY``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, func, select

from control_plane.billing.domain.canonical import canonical_wallet
from control_plane.billing.domain.policy import BillingPolicy
from control_plane.billing.domain.wallets import WalletState
from control_plane.db.engine import DEFAULT_SNAPSHOT_EVERY
from control_plane.db.tables import wallet_snapshots
from control_plane.db.uow import UnitOfWork
from shared.enums import LineItemType

FORMAT = 1
DEFAULT_EVERY = DEFAULT_SNAPSHOT_EVERY
KEEP = 3


@dataclass(frozen=True, slots=True)
class WalletSnapshot:
    """Every wallet and the billing policy in force once the consumer had folded the log up
    to ``as_of_seq``."""

    as_of_seq: int
    policy: BillingPolicy
    wallets: dict[str, WalletState]


def encode(snapshot: WalletSnapshot) -> str:
    """The canonical JSON of a snapshot (see the module docstring)."""
    state = {
        "as_of_seq": snapshot.as_of_seq,
        "format": FORMAT,
        "policy": {
            "bill_llm_from_invocation": snapshot.policy.bill_llm_from_invocation,
            "bill_llm_from_workunit_completed": snapshot.policy.bill_llm_from_workunit_completed,
        },
        "wallets": [
            json.loads(canonical_wallet(w))
            for _, w in sorted(snapshot.wallets.items(), key=lambda kv: kv[0])
        ],
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _wallet(obj: dict[str, Any]) -> WalletState:
    totals = obj["totals"]
    return WalletState(
        tenant_id=str(obj["tenant_id"]),
        as_of_seq=int(obj["as_of_seq"]),
        totals={kind: Decimal(str(totals[kind.value])) for kind in LineItemType},
    )


def decode(text: str) -> WalletSnapshot:
    """Back from ``encode``; raises ``ValueError`` on anything else."""
    try:
        state = json.loads(text)
        if state.get("format") != FORMAT:
            raise ValueError(f"unknown snapshot format {state.get('format')!r}")
        policy = state["policy"]
        wallets = [_wallet(w) for w in state["wallets"]]
        return WalletSnapshot(
            as_of_seq=int(state["as_of_seq"]),
            policy=BillingPolicy(
                bool(policy["bill_llm_from_workunit_completed"]),
                bool(policy["bill_llm_from_invocation"]),
            ),
            wallets={w.tenant_id: w for w in wallets},
        )
    except (KeyError, TypeError, ArithmeticError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a wallet snapshot: {exc!r}") from exc


def latest_seq(conn: Connection) -> int:
    """The checkpoint of the latest snapshot (0 when there is none)."""
    return int(conn.execute(select(func.max(wallet_snapshots.c.as_of_seq))).scalar() or 0)


def snapshot_due(uow: UnitOfWork, checkpoint: int) -> bool:
    """Whether the consumer, about to move its checkpoint to ``checkpoint``, should store a
    snapshot: the database's ``snapshot_every`` events or more past the latest one."""
    return checkpoint - latest_seq(uow.conn) >= uow.db.snapshot_every


def store_snapshot(uow: UnitOfWork, snapshot: WalletSnapshot) -> None:
    """Store ``snapshot`` in the caller's transaction and drop all but the latest ``KEEP``."""
    uow.conn.execute(
        wallet_snapshots.insert().values(
            as_of_seq=snapshot.as_of_seq, state=encode(snapshot), created_at_us=uow.now_us
        )
    )
    keep = (
        select(wallet_snapshots.c.as_of_seq)
        .order_by(wallet_snapshots.c.as_of_seq.desc())
        .offset(KEEP - 1)
        .limit(1)
    )
    oldest_kept = uow.conn.execute(keep).scalar()
    if oldest_kept is not None:
        uow.conn.execute(delete(wallet_snapshots).where(wallet_snapshots.c.as_of_seq < oldest_kept))


def latest_snapshot(conn: Connection, upto: int | None = None) -> WalletSnapshot | None:
    """The latest snapshot (at or before ``upto`` when given), or ``None``."""
    query = select(wallet_snapshots.c.state)
    if upto is not None:
        query = query.where(wallet_snapshots.c.as_of_seq <= upto)
    row = conn.execute(query.order_by(wallet_snapshots.c.as_of_seq.desc()).limit(1)).first()
    return None if row is None else decode(row.state)


def snapshot_seqs(conn: Connection) -> list[int]:
    """The checkpoints of the stored snapshots, oldest first."""
    return [
        int(s)
        for s in conn.execute(
            select(wallet_snapshots.c.as_of_seq).order_by(wallet_snapshots.c.as_of_seq)
        ).scalars()
    ]
