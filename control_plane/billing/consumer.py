"""The billing consumer on the database: folds the log into ``ledger_entries`` and ``wallets``
with its checkpoint in the same transaction (``eventlog.projection``), using the pure rules
(``projection.bill_events``). The database refuses a second line for the same key (unique
``(source_event_id, line_item_type, sub_key)``), so concurrent replicas and re-deliveries never
bill twice; only lines actually inserted reach the wallets.

It also releases the budget commitments of units that reached a terminal state, in the same
transaction, so that ``wallet spend + committed`` is exact at every commit, and stores a wallet
snapshot when one is due (``snapshots``).

The read side (ledger pages, wallets, the consumer's position) is ``billing.ledger``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from control_plane.billing.domain.policy import DEFAULT_POLICY, BillingPolicy, fold_policy
from control_plane.billing.domain.projection import bill_events
from control_plane.billing.domain.rules import LedgerLine
from control_plane.billing.domain.wallets import WalletState, fold_wallets
from control_plane.billing.snapshots import WalletSnapshot, snapshot_due, store_snapshot
from control_plane.db.engine import Database
from control_plane.db.tables import ledger_entries, tenants, wallets, work_units
from control_plane.db.uow import UnitOfWork
from control_plane.eventlog.projection import Projection, fold_in, run_until_caught_up
from control_plane.eventlog.store import dt_to_us, read_after_typed
from shared.enums import LineItemType
from shared.events import EventType, LogEvent, Payload, WorkUnitFailed, WorkUnitLeaseExpired
from shared.money import from_micros, to_micros

CONSUMER = "billing"

_TERMINAL = {
    EventType.WORKUNIT_COMPLETED.value,
    EventType.WORKUNIT_CANCELLED.value,
}
_ENDS_UNLESS_REQUEUED = {
    EventType.WORKUNIT_FAILED.value,
    EventType.WORKUNIT_LEASE_EXPIRED.value,
}


def policy_as_of(conn: Connection, seq: int) -> BillingPolicy:
    policy = DEFAULT_POLICY
    for event in read_after_typed(
        conn, 0, 100_000, types=[EventType.BILLING_POLICY_CHANGED.value], before=seq + 1
    ):
        policy = fold_policy(policy, event)
    return policy


def _insert_lines(uow: UnitOfWork, lines: Sequence[LedgerLine]) -> list[LedgerLine]:
    if not lines:
        return []
    rows = [
        {
            "entry_id": ln.entry_id,
            "source_event_id": ln.source_event_id,
            "source_seq": ln.source_seq,
            "line_item_type": str(ln.line_item_type),
            "tenant_id": ln.tenant_id,
            "work_unit_id": ln.work_unit_id,
            "execution_session_id": ln.execution_session_id,
            "quantity": ln.quantity,
            "unit": ln.unit,
            "pricing": orjson.dumps(dict(ln.pricing), option=orjson.OPT_SORT_KEYS).decode(),
            "amount_micros": to_micros(ln.amount_usd),
            "recorded_at_us": dt_to_us(ln.recorded_at),
            "sub_key": ln.sub_key,
        }
        for ln in lines
    ]
    # One statement for the batch: a line already stored (a re-delivery, another replica)
    # returns nothing, so only new lines reach the wallets. PostgreSQL gets the rows as one
    # JSON document (a fixed statement, prepared once, whatever the batch size); SQLite a
    # multi-row VALUES.
    if uow.is_postgres:
        result = uow.conn.execute(_PG_INSERT_LINES, {"rows": orjson.dumps(rows).decode()})
    else:
        stmt = sqlite_insert(ledger_entries).on_conflict_do_nothing()
        result = uow.conn.execute(stmt.returning(ledger_entries.c.entry_id), rows)
    inserted = {str(got) for got in result.scalars()}
    return [ln for ln in lines if ln.entry_id in inserted]


_LINE_COLUMNS = (
    "entry_id",
    "source_event_id",
    "source_seq",
    "line_item_type",
    "tenant_id",
    "work_unit_id",
    "execution_session_id",
    "quantity",
    "unit",
    "pricing",
    "amount_micros",
    "recorded_at_us",
    "sub_key",
)
_BIGINT_COLUMNS = {"source_seq", "amount_micros", "recorded_at_us"}
_PG_INSERT_LINES = text(
    f"INSERT INTO ledger_entries ({', '.join(_LINE_COLUMNS)}) "
    f"SELECT {', '.join(_LINE_COLUMNS)} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r("
    + ", ".join(f"{c} {'bigint' if c in _BIGINT_COLUMNS else 'text'}" for c in _LINE_COLUMNS)
    + ") ON CONFLICT DO NOTHING RETURNING entry_id"
)


def load_wallets(conn: Connection, tenant_ids: Iterable[str]) -> dict[str, WalletState]:
    """The stored wallets of ``tenant_ids`` (those that have one)."""
    ids = sorted(set(tenant_ids))
    if not ids:
        return {}
    return {
        r.tenant_id: WalletState(
            tenant_id=r.tenant_id,
            as_of_seq=int(r.as_of_seq),
            totals={
                LineItemType.WORKUNIT_CPU: from_micros(r.cpu_micros),
                LineItemType.LLM_TOKENS: from_micros(r.llm_micros),
            },
        )
        for r in conn.execute(select(wallets).where(wallets.c.tenant_id.in_(ids)))
    }


def all_wallets(conn: Connection) -> dict[str, WalletState]:
    """Every stored wallet."""
    return load_wallets(conn, conn.execute(select(wallets.c.tenant_id)).scalars())


_UPDATE_WALLET = (
    update(wallets)
    .where(wallets.c.tenant_id == bindparam("b_tenant"))
    .values(
        cpu_micros=bindparam("b_cpu"), llm_micros=bindparam("b_llm"), as_of_seq=bindparam("b_seq")
    )
)


_PG_UPDATE_WALLETS = text(
    "UPDATE wallets SET cpu_micros = v.cpu, llm_micros = v.llm, as_of_seq = v.seq "
    "FROM unnest(CAST(:b_tenant AS text[]), CAST(:b_cpu AS bigint[]), CAST(:b_llm AS bigint[]),"
    " CAST(:b_seq AS bigint[])) AS v(tenant_id, cpu, llm, seq) "
    "WHERE wallets.tenant_id = v.tenant_id"
)


def _store_wallets(uow: UnitOfWork, changed: dict[str, WalletState], known: set[str]) -> None:
    """Write the changed wallets: one UPDATE for the known ones (arrays on PostgreSQL, an
    executemany on SQLite), one INSERT for the new ones, whatever the number of tenants."""
    rows = [
        {
            "b_tenant": tenant_id,
            "b_cpu": to_micros(w.totals[LineItemType.WORKUNIT_CPU]),
            "b_llm": to_micros(w.totals[LineItemType.LLM_TOKENS]),
            "b_seq": w.as_of_seq,
        }
        for tenant_id, w in sorted(changed.items())
    ]
    updates = [r for r in rows if r["b_tenant"] in known]
    inserts = [
        {
            "tenant_id": r["b_tenant"],
            "cpu_micros": r["b_cpu"],
            "llm_micros": r["b_llm"],
            "as_of_seq": r["b_seq"],
        }
        for r in rows
        if r["b_tenant"] not in known
    ]
    if updates and uow.is_postgres:
        uow.conn.execute(
            _PG_UPDATE_WALLETS,
            {k: [r[k] for r in updates] for k in ("b_tenant", "b_cpu", "b_llm", "b_seq")},
        )
    elif updates:
        uow.conn.execute(_UPDATE_WALLET, updates)
    if inserts:
        uow.conn.execute(wallets.insert(), inserts)


_RELEASE = (
    update(tenants)
    .where(tenants.c.tenant_id == bindparam("b_tenant"))
    .values(committed_micros=tenants.c.committed_micros - bindparam("b_micros"))
)


def _terminal(event: LogEvent[Payload]) -> bool:
    """Whether ``event`` ends its unit: completed, cancelled, or failed / expired without being
    requeued (a failure or expiry whose payload is unreadable counts as not requeued, as one
    without ``requeued`` always did)."""
    if event.type in _TERMINAL:
        return True
    if event.type not in _ENDS_UNLESS_REQUEUED:
        return False
    payload = event.payload
    return not (isinstance(payload, WorkUnitFailed | WorkUnitLeaseExpired) and payload.requeued)


def _release_commitments(uow: UnitOfWork, events: Sequence[LogEvent[Payload]]) -> None:
    """Units that reached a terminal state no longer count against their tenant's budget."""
    done = [e.stream_id for e in events if _terminal(e)]
    if not done:
        return
    rows = uow.conn.execute(
        select(work_units.c.tenant_id, work_units.c.est_cost_micros).where(
            work_units.c.id.in_(done), work_units.c.est_cost_micros > 0
        )
    ).all()
    per_tenant: dict[str, int] = {}
    for r in rows:
        per_tenant[r.tenant_id] = per_tenant.get(r.tenant_id, 0) + int(r.est_cost_micros)
    if per_tenant:
        uow.conn.execute(
            _RELEASE, [{"b_tenant": t, "b_micros": m} for t, m in sorted(per_tenant.items())]
        )


def handle(uow: UnitOfWork, events: Sequence[LogEvent[Payload]]) -> None:
    """Fold ``events`` (the batch past the checkpoint, in seq order; the caller moves the
    checkpoint to the last one in the same transaction)."""
    policy = policy_as_of(uow.conn, events[0].seq - 1)
    batch = bill_events(policy, events)
    new_lines = _insert_lines(uow, batch.lines)
    if new_lines:
        tenants_touched = {ln.tenant_id for ln in new_lines}
        current = load_wallets(uow.conn, tenants_touched)
        folded = fold_wallets(current, new_lines)
        _store_wallets(uow, {t: folded[t] for t in tenants_touched}, set(current))
    _release_commitments(uow, events)
    checkpoint_after = events[-1].seq
    if snapshot_due(uow, checkpoint_after):
        store_snapshot(uow, WalletSnapshot(checkpoint_after, batch.policy, all_wallets(uow.conn)))


# what billing reads: billable events, the policy, and terminal events (commitments)
BILLING_TYPES = frozenset(
    {
        EventType.WORKUNIT_COMPLETED.value,
        EventType.LLM_INVOCATION_COMPLETED.value,
        EventType.BILLING_POLICY_CHANGED.value,
        EventType.WORKUNIT_FAILED.value,
        EventType.WORKUNIT_LEASE_EXPIRED.value,
        EventType.WORKUNIT_CANCELLED.value,
    }
)
BILLING_PROJECTION = Projection(CONSUMER, handle, BILLING_TYPES)


def catch_up(db: Database) -> int:
    return run_until_caught_up(db, BILLING_PROJECTION)


def catch_up_in(uow: UnitOfWork) -> None:
    """Fold everything up to now inside the caller's transaction (used by budget admission so
    that spend is exact at the moment of the decision)."""
    while fold_in(uow, BILLING_PROJECTION)[1]:
        pass
