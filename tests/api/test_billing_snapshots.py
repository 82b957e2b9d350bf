"""Wallet snapshots (KRAKO_WALLET_SNAPSHOT_EVERY): taken by the billing consumer, replay from
the latest one equals replay from zero equals the live state; a ledger that no longer adds up
to a snapshot is caught."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from sqlalchemy import update

from control_plane.billing import ledger as store
from control_plane.billing import snapshots
from control_plane.billing.consumer import catch_up
from control_plane.billing.domain.projection import verify_replay
from control_plane.billing.domain.wallets import fold_wallets
from control_plane.db.engine import Database
from control_plane.db.tables import ledger_entries
from control_plane.db.uow import write_transaction
from tests.api.billing_kit import replay, run_units
from tests.api.conftest import Api


def _db(api: Api) -> Database:
    return api.services.db


def test_snapshot_replay_equals_full_replay_equals_live(make_api: Callable[..., Api]) -> None:
    api = make_api(billing={"wallet_snapshot_every": 7})
    _, th = api.tenant("a")
    _, th2 = api.tenant("b")
    nh = api.node("n1", max_concurrency=64)
    run_units(api, th, "n1", nh, [3, 5, 8])
    run_units(api, th2, "n1", nh, [13], invocations=2, kind="llm_pod")
    catch_up(_db(api))
    run_units(api, th, "n1", nh, [21, 34], invocations=1, kind="llm_pod")
    run_units(api, th2, "n1", nh, [55])

    full = replay(api.client)
    snap = replay(api.client, from_snapshot=True)
    assert full["identical"] and snap["identical"], (full, snap)
    assert full["replay_digest"] == snap["replay_digest"] == full["live_digest"]
    assert full["from_snapshot_seq"] is None
    assert 0 < snap["from_snapshot_seq"] <= snap["as_of_seq"] == full["as_of_seq"]
    assert snap["events_replayed"] == full["as_of_seq"] - snap["from_snapshot_seq"]
    assert snap["events_replayed"] < full["events_replayed"]
    assert snap["ledger_entries"] == full["ledger_entries"] == 7 + 4

    with store.read_snapshot(_db(api)) as conn:
        seqs = snapshots.snapshot_seqs(conn)
        latest = snapshots.latest_snapshot(conn)
        lines = [
            ln for ln in store.iter_lines(conn) if latest and ln.source_seq <= latest.as_of_seq
        ]
        # the streamed replay and the pure fold of the whole log agree
        upto = store.checkpoint(conn)
        pure = verify_replay(
            store.events_upto(conn, upto), store.all_lines(conn), store.all_wallets(conn), upto
        )
    assert pure.identical and pure.replay_digest == full["replay_digest"]
    assert 1 <= len(seqs) <= snapshots.KEEP
    assert all(b - a >= 7 for a, b in pairwise(seqs))
    # a snapshot is exactly the wallets of the lines up to its checkpoint
    assert latest is not None
    assert fold_wallets({}, lines) == latest.wallets


def test_snapshots_are_taken_every_n_events_and_pruned(make_api: Callable[..., Api]) -> None:
    api = make_api(billing={"wallet_snapshot_every": 1})
    _, th = api.tenant()
    nh = api.node("n1", max_concurrency=64)
    for ms in (1, 2, 3, 4, 5):
        run_units(api, th, "n1", nh, [ms])
        catch_up(_db(api))
    with store.read_snapshot(_db(api)) as conn:
        seqs = snapshots.snapshot_seqs(conn)
        checkpoint = store.checkpoint(conn)
        latest = snapshots.latest_snapshot(conn)
    assert len(seqs) == snapshots.KEEP and seqs[-1] == checkpoint
    assert latest is not None and latest.as_of_seq == checkpoint
    assert snapshots.decode(snapshots.encode(latest)) == latest
    report = replay(api.client, from_snapshot=True)
    assert report["identical"] and report["events_replayed"] == 0


def test_snapshot_replay_catches_a_tampered_line(make_api: Callable[..., Api]) -> None:
    api = make_api(billing={"wallet_snapshot_every": 1})
    _, th = api.tenant()
    nh = api.node("n1", max_concurrency=64)
    [unit] = run_units(api, th, "n1", nh, [1000])
    catch_up(_db(api))
    run_units(api, th, "n1", nh, [2000])
    assert replay(api.client, from_snapshot=True)["identical"] is True
    with write_transaction(_db(api)) as uow:  # an amount changed behind billing's back
        uow.conn.execute(
            update(ledger_entries)
            .where(ledger_entries.c.work_unit_id == unit)
            .values(amount_micros=ledger_entries.c.amount_micros + 1)
        )
    full = replay(api.client)
    snap = replay(api.client, from_snapshot=True)
    assert full["identical"] is False
    assert snap["identical"] is False and snap["from_snapshot_seq"] is not None
