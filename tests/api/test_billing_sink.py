"""The JSONL file sink (KRAKO_LEDGER_JSONL_PATH): the file is the canonical ledger export, it
follows the database, recovers from crashes (truncated line, lines never written, a foreign
file) and is verified, or rebuilt, by replay."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from control_plane.billing import ledger as store
from control_plane.billing.domain.canonical import ledger_jsonl, ledger_order
from control_plane.billing.export import LedgerSink, SinkOutcome
from control_plane.db.engine import Database
from tests.api.billing_kit import complete, export, invocation_body, replay, run_units
from tests.api.conftest import Api


def _setup(api: Api) -> tuple[dict[str, str], dict[str, str]]:
    _, th = api.tenant()
    nh = api.node("n1", max_concurrency=64)
    return th, nh


def _db(api: Api) -> Database:
    return api.services.db


def _replace(path: Path, text: str) -> None:
    """Rewrite the file atomically (as another process would), so a running sink never sees
    it half written."""
    tmp = path.with_name(path.name + ".edit")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_sink_appends_in_ledger_order_and_equals_the_export(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    api = make_api()
    th, nh = _setup(api)
    run_units(api, th, "n1", nh, [5, 1234, 7])
    run_units(api, th, "n1", nh, [2, 3], invocations=2, kind="llm_pod")
    sink = LedgerSink(tmp_path / "ledger.jsonl")
    text = export(api.client)
    first = sink.sync(_db(api))  # no file yet: written whole, atomically
    assert first.outcome is SinkOutcome.REBUILT and first.appended == 5 + 2 * 2
    assert sink.path.read_text() == text
    assert sink.sync(_db(api)).outcome is SinkOutcome.IDENTICAL
    seqs = [json.loads(line)["source_seq"] for line in text.splitlines()]
    assert seqs == sorted(seqs)

    run_units(api, th, "n1", nh, [9])
    text = export(api.client)
    again = sink.sync(_db(api))
    assert (again.outcome, again.appended) == (SinkOutcome.APPENDED, 1)
    assert sink.path.read_text() == text


def test_sink_recovers_from_crashes(make_api: Callable[..., Api], tmp_path: Path) -> None:
    api = make_api()
    th, nh = _setup(api)
    run_units(api, th, "n1", nh, [1, 2, 3, 4])
    text = export(api.client)
    path = tmp_path / "ledger.jsonl"
    LedgerSink(path).sync(_db(api))
    lines = text.splitlines(keepends=True)

    # a crash in the middle of a write: the last line is cut short -> rebuilt
    path.write_text("".join(lines[:-1]) + lines[-1][:40])
    result = LedgerSink(path).sync(_db(api))
    assert result.outcome is SinkOutcome.REBUILT and "truncated" in result.reason
    assert path.read_text() == text

    # a crash between the commit and the write: the file is behind -> the rest is appended
    path.write_text("".join(lines[:-2]))
    result = LedgerSink(path).sync(_db(api))
    assert (result.outcome, result.appended) == (SinkOutcome.APPENDED, 2)
    assert path.read_text() == text

    # a line lost in the middle: the count check of a fresh process -> rebuilt
    path.write_text(lines[0] + "".join(lines[2:]))
    assert LedgerSink(path).sync(_db(api)).outcome is SinkOutcome.REBUILT
    assert path.read_text() == text

    # a line the database does not hold (another database's file) -> rebuilt
    foreign = json.loads(lines[-1])
    foreign.update(source_seq=10**9, entry_id="le_foreign")
    path.write_text(text + json.dumps(foreign, sort_keys=True, separators=(",", ":")) + "\n")
    assert LedgerSink(path).sync(_db(api)).outcome is SinkOutcome.REBUILT
    assert path.read_text() == text

    # the file is gone -> rebuilt
    path.unlink()
    assert LedgerSink(path).sync(_db(api)).outcome is SinkOutcome.REBUILT
    assert path.read_text() == text
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_two_writers_never_duplicate_a_line(make_api: Callable[..., Api], tmp_path: Path) -> None:
    """Two sinks on one file (two replicas on one machine) exclude each other and each
    notices what the other appended."""
    api = make_api()
    th, nh = _setup(api)
    path = tmp_path / "ledger.jsonl"
    a, b = LedgerSink(path), LedgerSink(path)
    db = _db(api)
    stop = threading.Event()
    errors: list[BaseException] = []

    def spin(sink: LedgerSink) -> None:
        try:
            while not stop.is_set():
                sink.sync(db)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=spin, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            run_units(api, th, "n1", nh, [1, 2, 3])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    text = export(api.client)
    a.sync(db)
    b.sync(db)
    assert path.read_text() == text
    ids = [json.loads(line)["entry_id"] for line in text.splitlines()]
    assert len(ids) == len(set(ids)) == 9


def test_replay_verifies_and_rebuilds_the_configured_sink(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    path = tmp_path / "sink" / "ledger.jsonl"
    api = make_api(billing={"ledger_jsonl_path": path})
    th, nh = _setup(api)
    run_units(api, th, "n1", nh, [10, 20])
    run_units(api, th, "n1", nh, [30], invocations=3, kind="llm_pod")

    report = replay(api.client)
    assert report["identical"] is True and report["jsonl_sink"] == "identical", report
    text = export(api.client)
    assert path.read_text() == text and len(text.splitlines()) == 6

    # an edited amount (same size, so no sink notices it by its shape): replay rewrites it
    lines = text.splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["amount_usd"] = "9.999999"
    _replace(
        path,
        lines[0]
        + json.dumps(entry, sort_keys=True, separators=(",", ":"))
        + "\n"
        + "".join(lines[2:]),
    )
    report = replay(api.client)
    assert report["identical"] is True and report["jsonl_sink"] == "rebuilt", report
    assert path.read_text() == text
    assert replay(api.client)["jsonl_sink"] == "identical"

    # without a sink the field is null
    plain = make_api()
    assert replay(plain.client)["jsonl_sink"] is None


def test_ledger_pages_never_split_an_event(make_api: Callable[..., Api]) -> None:
    """Events with several lines (tokens billed from the completion, two models) stream in
    canonical order whatever the page size, even a page smaller than one event."""
    api = make_api(
        billing={"bill_llm_from_workunit_completed": True, "bill_llm_from_invocation": False}
    )
    th, nh = _setup(api)
    for model in ("stub", "gpt-4o"):
        unit = api.submit(th, kind="llm_pod", payload={"prompt": "x"})["id"]
        [claim] = api.poll("n1", nh)["claims"]
        for i, m in enumerate(("stub", model)):
            r = api.client.post(
                f"/v1/workunits/{unit}/llm-invocations",
                json=invocation_body(claim["claim_token"], f"c{i}", 10, 20, m),
                headers=nh,
            )
            assert r.status_code == 201, r.text
        assert complete(api.client, nh, unit, claim["claim_token"], 5).status_code == 200
    text = export(api.client)
    assert len(text.splitlines()) == 2 + 3
    with store.read_snapshot(_db(api)) as conn:
        for page in (1, 2, 3, 1000):
            assert ledger_jsonl(store.iter_lines(conn, page=page)) == text
            assert list(store.iter_lines(conn, page=page)) == sorted(
                store.iter_lines(conn), key=ledger_order
            )
