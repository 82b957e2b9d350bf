"""Replay verification on the database, streamed: rebuild ledger and wallets from the event log
alone and compare the digest (``canonical.digest``) with the live state's, in one consistent
read, in memory proportional to the number of tenants rather than to the log.

- From zero: every event up to the billing consumer's checkpoint is folded with the pure rules
  (``projection.bill_events``, ``wallets.fold_wallets``), chunk by chunk (only the billable
  events and the policy changes are read, typed: no other event gives a line); the canonical lines
  are hashed as they come (they come in ledger order: seq by seq, each event's lines sorted).
  This is ``projection.verify_replay`` without holding the log or the ledger in memory; a test
  checks that both give the same digests.
- From a snapshot (``from_snapshot``): the latest wallet snapshot at or before the checkpoint
  gives the policy in force and the wallets; only the events after it are folded. The lines
  before it are the live ones (a snapshot holds wallets, not lines), and they must add up to
  the snapshot's wallets, or the replay is not ``identical``. A full replay checks every line;
  a snapshot replay checks the wallets and every line since the snapshot, for a fraction of
  the work.

With a JSONL sink, the file is brought up to the same read and compared byte for byte (SHA-256)
with the replayed ledger's canonical JSONL; a file that differs is rebuilt.

Event ids are unique in the log and every event is folded once, so a line key can only repeat
within one event's lines: deduplicating within a chunk is as strict as ``project``'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection

from control_plane.billing import ledger
from control_plane.billing.consumer import catch_up
from control_plane.billing.domain.canonical import canonical_line, ledger_order, wallets_jsonl
from control_plane.billing.domain.policy import DEFAULT_POLICY, BillingPolicy
from control_plane.billing.domain.projection import bill_events
from control_plane.billing.domain.rules import BILLABLE_TYPES, LedgerLine, LineKey
from control_plane.billing.domain.wallets import WalletState, fold_wallets
from control_plane.billing.export import LedgerSink, SinkOutcome
from control_plane.billing.snapshots import latest_snapshot
from control_plane.db.engine import Database
from control_plane.eventlog.store import count_between
from shared.events import EventType, LogEvent, Payload
from shared.wire import ReplayReport

CHUNK = 5000

REPLAY_TYPES = BILLABLE_TYPES | {EventType.BILLING_POLICY_CHANGED.value}
"""What the rebuild reads: the billable events and the policy; every other event gives no
line and changes no policy, so it is counted (``events_replayed``) but not read."""


class _Hasher:
    """The canonical digest, fed line by line in ledger order, then the wallets."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.lines = 0

    def add(self, lines: Iterable[LedgerLine]) -> None:
        text = "".join(canonical_line(line) + "\n" for line in lines)
        if text:
            self._h.update(text.encode("utf-8"))
            self.lines += text.count("\n")

    def copy(self) -> _Hasher:
        twin = _Hasher()
        twin._h, twin.lines = self._h.copy(), self.lines
        return twin

    def ledger_sha256(self) -> str:
        """SHA-256 of the ledger's canonical JSONL so far (what the JSONL sink must hold)."""
        return self._h.copy().hexdigest()

    def digest(self, wallets: dict[str, WalletState]) -> str:
        """``canonical.digest`` of the lines fed so far and ``wallets``."""
        h = self._h.copy()
        h.update(wallets_jsonl(wallets).encode("utf-8"))
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """A rebuilt state: its digest, its ledger's JSONL digest, and what it took."""

    digest: str
    ledger_sha256: str
    events_replayed: int
    ledger_entries: int
    from_snapshot_seq: int | None
    consistent: bool
    """False when the live lines before the snapshot do not add up to its wallets."""


@dataclass(frozen=True, slots=True)
class _Live:
    """The live state's digest, and the start of the replay: the hasher state after the
    live lines up to the start seq, and the wallets those lines add up to."""

    digest: str
    prefix: _Hasher
    prefix_wallets: dict[str, WalletState]


def _live(conn: Connection, start: int) -> _Live:
    """One pass over the live ledger: its digest, and the prefix up to seq ``start``."""
    h = _Hasher()
    prefix: _Hasher | None = None if start > 0 else h.copy()
    prefix_wallets: dict[str, WalletState] = {}
    batch: list[LedgerLine] = []

    def flush() -> None:
        nonlocal prefix_wallets, batch
        if prefix is None:
            prefix_wallets = fold_wallets(prefix_wallets, batch)
        h.add(batch)
        batch = []

    for line in ledger.iter_lines(conn):
        if prefix is None and line.source_seq > start:
            flush()
            prefix = h.copy()
        batch.append(line)
        if len(batch) >= CHUNK:
            flush()
    flush()
    return _Live(h.digest(ledger.all_wallets(conn)), prefix or h.copy(), prefix_wallets)


def live_digest(conn: Connection) -> str:
    """The live state's digest, streamed from the tables."""
    return _live(conn, 0).digest


def _fold_log(
    conn: Connection,
    h: _Hasher,
    policy: BillingPolicy,
    wallets: dict[str, WalletState],
    after: int,
    upto: int,
) -> tuple[dict[str, WalletState], int]:
    """Fold the events in ``(after, upto]`` into ``h`` and ``wallets``; returns the wallets
    and how many events were folded (every event of the range, read or not)."""
    chunk: list[LogEvent[Payload]] = []
    for event in ledger.events_upto(conn, upto, REPLAY_TYPES, after):
        chunk.append(event)
        if len(chunk) == CHUNK:
            policy, wallets = _fold_chunk(h, policy, wallets, chunk)
            chunk = []
    if chunk:
        policy, wallets = _fold_chunk(h, policy, wallets, chunk)
    return wallets, count_between(conn, after, upto)


def _fold_chunk(
    h: _Hasher,
    policy: BillingPolicy,
    wallets: dict[str, WalletState],
    events: list[LogEvent[Payload]],
) -> tuple[BillingPolicy, dict[str, WalletState]]:
    result = bill_events(policy, events)
    seen: set[LineKey] = set()
    new: list[LedgerLine] = []
    for line in result.lines:
        if line.key not in seen:
            seen.add(line.key)
            new.append(line)
    new.sort(key=ledger_order)
    h.add(new)
    return result.policy, fold_wallets(wallets, new)


def replay_in(conn: Connection, upto: int, from_snapshot: bool = False) -> tuple[str, ReplayResult]:
    """The live digest, and billing rebuilt from the log up to seq ``upto`` (from the latest
    snapshot at or before ``upto`` when ``from_snapshot``), in the caller's read."""
    snapshot = latest_snapshot(conn, upto) if from_snapshot else None
    start = snapshot.as_of_seq if snapshot is not None else 0
    live = _live(conn, start)
    h = live.prefix
    consistent = True
    policy: BillingPolicy = DEFAULT_POLICY
    wallets: dict[str, WalletState] = {}
    if snapshot is not None:
        policy, wallets = snapshot.policy, dict(snapshot.wallets)
        consistent = wallets_jsonl(live.prefix_wallets) == wallets_jsonl(wallets)
    wallets, folded = _fold_log(conn, h, policy, wallets, start, upto)
    return live.digest, ReplayResult(
        digest=h.digest(wallets),
        ledger_sha256=h.ledger_sha256(),
        events_replayed=folded,
        ledger_entries=h.lines,
        from_snapshot_seq=snapshot.as_of_seq if snapshot is not None else None,
        consistent=consistent,
    )


def replay(
    db: Database, from_snapshot: bool = False, sink: LedgerSink | None = None
) -> ReplayReport:
    """Catch the consumer up, then compare the live state with its replay in one consistent
    read (and verify, or rebuild, the JSONL sink against the replayed ledger)."""
    catch_up(db)
    guard: AbstractContextManager[None] = sink.locked() if sink is not None else nullcontext()
    with guard, ledger.read_snapshot(db) as conn:
        upto = ledger.checkpoint(conn)
        live, rebuilt = replay_in(conn, upto, from_snapshot)
        sink_state: Literal["identical", "rebuilt"] | None = None
        if sink is not None:
            outcome = sink.verify_in(conn, rebuilt.ledger_sha256).outcome
            sink_state = "rebuilt" if outcome is SinkOutcome.REBUILT else "identical"
    return ReplayReport(
        identical=rebuilt.consistent and live == rebuilt.digest,
        live_digest=live,
        replay_digest=rebuilt.digest,
        events_replayed=rebuilt.events_replayed,
        ledger_entries=rebuilt.ledger_entries,
        as_of_seq=upto,
        from_snapshot_seq=rebuilt.from_snapshot_seq,
        jsonl_sink=sink_state,
    )
