"""The event log's storage contract, run on every backend."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from control_plane.db.engine import Database
from control_plane.db.uow import UnitOfWork, read_connection, write_transaction
from control_plane.eventlog import append, append_idempotent, last_seq, read_after, read_stream
from control_plane.eventlog.checkpoints import get_checkpoint, set_checkpoint
from control_plane.eventlog.projection import Projection, run_until_caught_up
from shared.events import EventType, NewEvent, NodeDrained, TenantCreated


def node_event(event_id: str, node: str = "n1", tenant: str | None = None) -> NewEvent:
    return NewEvent(
        event_id=event_id,
        type=EventType.NODE_DRAINED,
        tenant_id=tenant,
        stream_id=node,
        payload=NodeDrained(node_id=node),
    )


def test_append_assigns_increasing_seq_and_reads_back(db: Database) -> None:
    with write_transaction(db) as uow:
        stored = append(uow, [node_event("a"), node_event("b"), node_event("c", "n2")])
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)
    with read_connection(db) as conn:
        got = read_after(conn, 0)
        assert [e.event_id for e in got] == ["a", "b", "c"]
        assert got[0].payload == {"node_id": "n1"}
        assert read_after(conn, got[0].seq)[0].event_id == "b"
        assert [e.event_id for e in read_stream(conn, "n2")] == ["c"]
        assert last_seq(conn) == got[-1].seq


def test_append_idempotent_returns_stored_event_and_appends_nothing(db: Database) -> None:
    with write_transaction(db) as uow:
        first = append_idempotent(uow, [node_event("x")])[0]
    with write_transaction(db) as uow:
        again = append_idempotent(uow, [node_event("x"), node_event("y")])
    assert again[0].seq == first.seq
    assert again[0].recorded_at == first.recorded_at
    with read_connection(db) as conn:
        assert [e.event_id for e in read_after(conn, 0)] == ["x", "y"]


def test_plain_append_of_a_known_id_is_refused_by_the_database(db: Database) -> None:
    with write_transaction(db) as uow:
        append(uow, [node_event("dup")])
    with pytest.raises(IntegrityError), write_transaction(db) as uow:
        append(uow, [node_event("dup")])
    with read_connection(db) as conn:
        assert len(read_after(conn, 0)) == 1


def test_rolled_back_transaction_leaves_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), write_transaction(db) as uow:
        append(uow, [node_event("r1")])
        raise RuntimeError("boom")
    with read_connection(db) as conn:
        assert read_after(conn, 0) == []


def test_filters_by_type_tenant_and_stream(db: Database) -> None:
    with write_transaction(db) as uow:
        append(
            uow,
            [
                node_event("1", tenant="t1"),
                NewEvent(
                    event_id="2",
                    type=EventType.TENANT_CREATED,
                    tenant_id="t2",
                    stream_id="t2",
                    payload=TenantCreated(tenant_id="t2", name="two"),
                ),
                node_event("3", tenant="t2"),
            ],
        )
    with read_connection(db) as conn:
        assert [e.event_id for e in read_after(conn, 0, tenant_id="t2")] == ["2", "3"]
        assert [e.event_id for e in read_after(conn, 0, types=["tenant.created"])] == ["2"]
        assert [e.event_id for e in read_after(conn, 0, limit=2)] == ["1", "2"]


def test_checkpoint_commits_with_output_or_not_at_all(db: Database) -> None:
    with write_transaction(db) as uow:
        append(uow, [node_event(f"e{i}") for i in range(5)])
    seen: list[str] = []

    def handle(uow, events):  # type: ignore[no-untyped-def]
        seen.extend(e.event_id for e in events)
        if len(seen) > 5:
            raise RuntimeError("crash mid-batch")

    proj = Projection("test", handle)
    assert run_until_caught_up(db, proj, batch=2) == 5
    assert seen == [f"e{i}" for i in range(5)]
    with write_transaction(db) as uow:
        append(uow, [node_event("e5")])
    with pytest.raises(RuntimeError):
        run_until_caught_up(db, proj)
    with read_connection(db) as conn:
        # the crash rolled the checkpoint back with the output: e5 is consumed again next time
        assert get_checkpoint(conn, "test") == read_after(conn, 0)[4].seq


def test_set_checkpoint_inserts_then_updates(db: Database) -> None:
    with write_transaction(db) as uow:
        set_checkpoint(uow, "c", 5)
    with write_transaction(db) as uow:
        set_checkpoint(uow, "c", 9)
    with read_connection(db) as conn:
        assert get_checkpoint(conn, "c") == 9
        assert get_checkpoint(conn, "other") == 0


def test_concurrent_appenders_never_let_a_tailing_reader_skip(db: Database) -> None:
    """Several appenders on separate connections sleep randomly inside their transactions
    while a reader tails ``seq > last``: it must see every seq once, in order, none skipped."""
    writers, per_writer = 6, 25
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        try:
            for i in range(per_writer):
                with write_transaction(db) as uow:
                    time.sleep(rng.random() * 0.003)
                    append(uow, [node_event(f"w{w}-{i}-{j}") for j in range(rng.randint(1, 3))])
                    time.sleep(rng.random() * 0.003)
        except BaseException as exc:
            errors.append(exc)

    seen: list[int] = []

    def reader() -> None:
        last = 0
        while True:
            finished = done.is_set()
            with read_connection(db) as conn:
                batch = read_after(conn, last, 50)
            for e in batch:
                seen.append(e.seq)
                last = e.seq
            if finished and not batch:
                return
            if not batch:
                time.sleep(0.0005)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join(timeout=60)
    assert not errors
    with read_connection(db) as conn:
        all_seqs = [e.seq for e in read_after(conn, 0, 100_000)]
    assert seen == all_seqs  # every committed event, once, in order
    assert len(set(seen)) == len(seen)


def test_postgres_writers_are_serialized_by_the_advisory_lock(db: Database) -> None:
    if not db.is_postgres:
        pytest.skip("PostgreSQL-only mechanism")
    with write_transaction(db) as uow:
        held = uow.conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        ).scalar_one()
        assert held >= 1


ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=6)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batches=st.lists(st.lists(ids, min_size=1, max_size=5), min_size=1, max_size=6))
def test_property_idempotent_append_and_ordered_reads(
    db: Database, batches: list[list[str]]
) -> None:
    prefix = uuid.uuid4().hex[:6]
    expected: list[str] = []
    for batch in batches:
        with write_transaction(db) as uow:
            append_idempotent(uow, [node_event(f"{prefix}-{i}") for i in batch])
        for i in batch:
            if f"{prefix}-{i}" not in expected:
                expected.append(f"{prefix}-{i}")
    with read_connection(db) as conn:
        got = [e for e in read_after(conn, 0, 100_000) if e.event_id.startswith(prefix + "-")]
    assert [e.event_id for e in got] == expected
    seqs = [e.seq for e in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # read-after from any seen position returns exactly the suffix
    with read_connection(db) as conn:
        for k, e in enumerate(got):
            rest = [x for x in read_after(conn, e.seq, 100_000) if x.event_id.startswith(prefix)]
            assert [x.event_id for x in rest] == expected[k + 1 :]


def test_group_commit_keeps_each_commands_outcome_its_own(db: Database) -> None:
    """Commands that share a batch: the ones that raise leave nothing, the others commit, and
    every successful command has committed by the time its block returns."""
    ok_ids: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def command(i: int) -> None:
        try:
            with write_transaction(db) as uow:
                append(uow, [node_event(f"g{i}")])
                time.sleep(random.random() * 0.002)
                if i % 3 == 0:
                    raise RuntimeError("this command fails")
            with read_connection(db) as conn:  # durable and visible once the block returns
                assert [e.event_id for e in read_after(conn, 0, 100_000) if e.event_id == f"g{i}"]
            with lock:
                ok_ids.append(f"g{i}")
        except RuntimeError:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=command, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with read_connection(db) as conn:
        stored = sorted(e.event_id for e in read_after(conn, 0, 100_000))
    assert stored == sorted(ok_ids)
    assert len(ok_ids) == 40


def test_a_settled_command_sees_the_deferred_steps_of_its_batch(db: Database) -> None:
    """A command opened with ``settled=True`` in the middle of a batch sees what the earlier
    members' deferred steps do (they run before it), and those steps still run only once."""
    ran: list[str] = []
    seen: list[list[str]] = []

    def deferred(uow: UnitOfWork) -> None:
        ran.append("step")
        append(uow, [node_event("from-deferred-step")])

    def settled_reader() -> None:
        with write_transaction(db, settled=True) as uow:
            seen.append([e.event_id for e in read_after(uow.conn, 0, 100)])

    reader = threading.Thread(target=settled_reader)
    with write_transaction(db) as uow:
        append(uow, [node_event("first")])
        uow.defer("step", deferred)
        reader.start()
        time.sleep(0.3)  # the reader queues behind this command: same batch
    reader.join()
    assert seen == [["first", "from-deferred-step"]]
    assert ran == ["step"]
    with read_connection(db) as conn:
        assert [e.event_id for e in read_after(conn, 0, 100)] == ["first", "from-deferred-step"]
