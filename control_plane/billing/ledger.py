"""The read side of billing: the ledger, wallets and the consumer's position as the API, the
replay, the JSONL sink and the anomaly checker read them. Nothing here writes: the billing
consumer (``consumer``) is the only writer of these tables.

``iter_lines`` streams the ledger in canonical order (``(source_seq, key)``, the order of
``canonical.ledger_jsonl``), whole events at a time, without loading it all; ``read_snapshot``
opens one consistent read of ledger, wallets, checkpoint and log.

The route-facing queries (``read_ledger``, ``ledger_jsonl``, ``read_wallet``,
``anomaly_report``) read what the consumer has folded; a read that must see the consumer at
the head of the log first waits for it (``position`` gives both, ``control_plane.api``
waits), it never folds itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from itertools import groupby
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, func, select, tuple_

from control_plane.billing.consumer import BILLING_TYPES, CONSUMER, all_wallets, load_wallets
from control_plane.billing.domain.anomalies import find_anomalies
from control_plane.billing.domain.canonical import canonical_line, ledger_order
from control_plane.billing.domain.rules import LedgerLine, as_utc
from control_plane.billing.domain.wallets import WalletState
from control_plane.db.engine import Database
from control_plane.db.tables import checkpoints, events, ledger_entries, tenants
from control_plane.errors import NotFound
from control_plane.eventlog.checkpoints import get_checkpoint
from control_plane.eventlog.store import read_after_typed, us_to_dt
from shared.enums import LineItemType
from shared.events import LogEvent, Payload
from shared.money import from_micros, to_micros
from shared.wire import AnomalyReport, LedgerEntry, Wallet

_TENANT_EXISTS = select(tenants.c.tenant_id).where(tenants.c.tenant_id == bindparam("b_id"))

__all__ = [
    "all_lines",
    "all_wallets",
    "anomaly_report",
    "checkpoint",
    "count_lines",
    "events_upto",
    "iter_lines",
    "ledger_jsonl",
    "ledger_page",
    "lines_at",
    "money",
    "position",
    "read_ledger",
    "read_snapshot",
    "read_wallet",
    "spent_micros",
    "wallet_of",
]

# The log head and the consumer's checkpoint, in one statement.
_POSITION = select(
    select(func.max(events.c.seq)).scalar_subquery(),
    select(checkpoints.c.last_seq).where(checkpoints.c.name == CONSUMER).scalar_subquery(),
)


def _line(r: Any) -> LedgerLine:
    return LedgerLine(
        entry_id=r.entry_id,
        source_event_id=r.source_event_id,
        source_seq=int(r.source_seq),
        line_item_type=LineItemType(r.line_item_type),
        tenant_id=r.tenant_id,
        work_unit_id=r.work_unit_id,
        execution_session_id=r.execution_session_id,
        quantity=r.quantity,
        unit=r.unit,
        pricing=orjson.loads(r.pricing),
        amount_usd=from_micros(r.amount_micros),
        recorded_at=as_utc(us_to_dt(r.recorded_at_us)),
        sub_key=r.sub_key,
    )


def _entry(row: Any) -> LedgerEntry:
    return _line(row).to_entry()


def ledger_page(
    conn: Connection,
    tenant_id: str | None,
    after_seq: int,
    after_key: tuple[int, str] | None,
    limit: int,
) -> list[LedgerEntry]:
    """Up to ``limit`` lines with ``source_seq > after_seq`` (past ``after_key``, the page
    cursor, when given) in ``(source_seq, entry_id)`` order; one tenant's when given."""
    query = select(ledger_entries).where(ledger_entries.c.source_seq > after_seq)
    if tenant_id is not None:
        query = query.where(ledger_entries.c.tenant_id == tenant_id)
    if after_key is not None:
        query = query.where(
            tuple_(ledger_entries.c.source_seq, ledger_entries.c.entry_id) > tuple_(*after_key)
        )
    query = query.order_by(ledger_entries.c.source_seq, ledger_entries.c.entry_id).limit(limit)
    return [_entry(r) for r in conn.execute(query)]


def all_lines(conn: Connection) -> list[LedgerLine]:
    """The whole ledger in canonical order (prefer ``iter_lines`` for large ledgers)."""
    return list(iter_lines(conn))


def iter_lines(
    conn: Connection,
    after_seq: int = 0,
    tenant_id: str | None = None,
    upto_seq: int | None = None,
    page: int = 2000,
) -> Iterator[LedgerLine]:
    """Lines with ``after_seq < source_seq (<= upto_seq)`` in canonical order
    (``canonical.ledger_order``), streamed in pages that always hold whole events, so the
    lines of one event are sorted together whatever order the database returns them in."""
    base = select(ledger_entries)
    if tenant_id is not None:
        base = base.where(ledger_entries.c.tenant_id == tenant_id)
    if upto_seq is not None:
        base = base.where(ledger_entries.c.source_seq <= upto_seq)
    after = after_seq
    while True:
        rows = conn.execute(
            base.where(ledger_entries.c.source_seq > after)
            .order_by(ledger_entries.c.source_seq, ledger_entries.c.entry_id)
            .limit(page)
        ).all()
        if not rows:
            return
        if len(rows) == page:
            last = int(rows[-1].source_seq)
            rows = [r for r in rows if int(r.source_seq) != last]
            if not rows:  # one event fills the page: read all of its lines
                rows = list(conn.execute(base.where(ledger_entries.c.source_seq == last)))
        for _, group in groupby(rows, key=lambda r: int(r.source_seq)):
            yield from sorted((_line(r) for r in group), key=ledger_order)
        after = int(rows[-1].source_seq)


def count_lines(conn: Connection, upto_seq: int | None = None) -> int:
    """How many lines the ledger holds (with ``source_seq <= upto_seq`` when given)."""
    query = select(func.count()).select_from(ledger_entries)
    if upto_seq is not None:
        query = query.where(ledger_entries.c.source_seq <= upto_seq)
    return int(conn.execute(query).scalar_one())


def lines_at(conn: Connection, source_seq: int) -> list[LedgerLine]:
    """The lines of the event at ``source_seq``, in canonical order."""
    rows = conn.execute(select(ledger_entries).where(ledger_entries.c.source_seq == source_seq))
    return sorted((_line(r) for r in rows), key=ledger_order)


@contextmanager
def read_snapshot(db: Database) -> Iterator[Connection]:
    """One consistent read (REPEATABLE READ on PostgreSQL; one read transaction on SQLite, WAL
    keeps its snapshot) of ledger, wallets, checkpoint and log; nothing is written."""
    with db.engine.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ") if db.is_postgres else raw
        with conn.begin() as tx:
            yield conn
            tx.rollback()


def wallet_of(conn: Connection, tenant_id: str) -> WalletState:
    return load_wallets(conn, [tenant_id]).get(tenant_id) or WalletState(tenant_id)


def spent_micros(conn: Connection, tenant_id: str) -> int:
    w = wallet_of(conn, tenant_id)
    return to_micros(w.total_usd)


def events_upto(
    conn: Connection, upto: int, types: frozenset[str] | None = None, after: int = 0
) -> Iterator[LogEvent[Payload]]:
    """Typed events with ``after < seq <= upto`` (of ``types`` only, when given), streamed in
    bounded seq windows so that a read filtered by type stays an index range scan."""
    window = 10_000
    wanted = sorted(types) if types is not None else None
    while after < upto:
        end = min(upto, after + window)
        yield from read_after_typed(conn, after, window + 1, types=wanted, before=end + 1)
        after = end


def checkpoint(conn: Connection) -> int:
    """The billing consumer's checkpoint: every event up to it is folded."""
    return get_checkpoint(conn, CONSUMER)


def money(micros: int) -> Decimal:
    return from_micros(micros)


# --------------------------------------------------------------------------- route queries


def position(db: Database) -> tuple[int, int]:
    """``(log head, billing checkpoint)``: the consumer has folded the log as it stood when
    the two are equal."""
    with db.engine.connect() as conn:
        head, folded = conn.execute(_POSITION).one()
    return int(head or 0), int(folded or 0)


def read_ledger(
    db: Database,
    tenant_id: str | None,
    after_seq: int,
    after_key: tuple[int, str] | None,
    limit: int,
) -> list[LedgerEntry]:
    """The query behind ``GET /v1/billing/ledger`` (JSON pages): ``ledger_page``."""
    with db.engine.connect() as conn:
        return ledger_page(conn, tenant_id, after_seq, after_key, limit)


def ledger_jsonl(db: Database, tenant_id: str | None, after_seq: int) -> Iterator[bytes]:
    """The query behind ``GET /v1/billing/ledger`` as JSONL: canonical lines (one a line) in
    canonical ledger order, in chunks of about a thousand lines, from one consistent read."""
    with read_snapshot(db) as conn:
        chunk: list[str] = []
        for line in iter_lines(conn, after_seq=after_seq, tenant_id=tenant_id):
            chunk.append(canonical_line(line) + "\n")
            if len(chunk) >= 1000:
                yield "".join(chunk).encode()
                chunk = []
        if chunk:
            yield "".join(chunk).encode()


def read_wallet(db: Database, tenant_id: str) -> Wallet:
    """The query behind ``GET /v1/billing/wallets/{tenant_id}``: the wallet, or 404 for a
    tenant that does not exist."""
    with db.engine.connect() as conn:
        if conn.execute(_TENANT_EXISTS, {"b_id": tenant_id}).first() is None:
            raise NotFound(f"tenant {tenant_id} not found")
        return wallet_of(conn, tenant_id).to_wire()


def anomaly_report(db: Database, policy_flags_conflict: bool) -> AnomalyReport:
    """The query behind ``GET /v1/billing/anomalies``: the ledger checked against the log up
    to the consumer's checkpoint, in one consistent read. ``policy_flags_conflict``: both LLM
    billing flags are on in the settings."""
    with read_snapshot(db) as conn:
        upto = checkpoint(conn)
        lines = all_lines(conn)
        # billing reads only its own event types: the rest cannot matter here
        found = list(events_upto(conn, upto, BILLING_TYPES))
    return AnomalyReport(anomalies=find_anomalies(found, lines, policy_flags_conflict))
