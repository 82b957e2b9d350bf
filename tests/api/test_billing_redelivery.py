"""No double billing under re-delivery: seeded random runs through the real API where every
completion and LLM invocation report is repeated, interleaved across units, sent to either of
two control-plane replicas on one database, while two extra consumers catch billing up from
threads. The ledger has one line per billable event, the wallets are the sums of the lines
(and of amounts computed here independently), replay (from zero and from a snapshot) is
identical, and the JSONL sink is the ledger export."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from control_plane.billing import consumer as store
from control_plane.db.engine import Database
from tests.api.billing_kit import (
    anomalies,
    claim_all,
    complete,
    cpu_usd,
    entries,
    export,
    invoke,
    replay,
    token_usd,
    wallet_total,
)
from tests.api.conftest import Api


@dataclass
class Unit:
    id: str
    tenant_id: str
    token: str = ""
    cpu_ms: int = 0
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def expected_usd(self) -> Decimal:
        return cpu_usd(self.cpu_ms) + sum(
            (token_usd(tin, tout) for _, tin, tout in self.calls), Decimal(0)
        )


Action = tuple[str, Unit, int]  # ("invoke" | "complete", the unit, index of the call)


def _plan(rng: random.Random, units: list[Unit]) -> list[tuple[Action, bool]]:
    """Per unit: its calls then its completion, each delivered once and then re-delivered 0-2
    times anywhere later; the units' sequences are interleaved at random."""
    sequences: list[list[tuple[Action, bool]]] = []
    for unit in units:
        seq: list[tuple[Action, bool]] = [
            (("invoke", unit, i), False) for i in range(len(unit.calls))
        ]
        seq.append((("complete", unit, 0), False))
        for original in list(seq):
            for _ in range(rng.randint(0, 2)):
                at = rng.randint(seq.index(original) + 1, len(seq))
                seq.insert(at, (original[0], True))
        sequences.append(seq)
    plan: list[tuple[Action, bool]] = []
    while any(sequences):
        plan.append(rng.choice([s for s in sequences if s]).pop(0))
    return plan


def _db(api: Api) -> Database:
    return api.services.db


@pytest.mark.parametrize("seed", [7, 2024])
def test_redelivery_never_bills_twice(
    make_api: Callable[..., Api], tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    sink_path = tmp_path / "ledger.jsonl"
    a = make_api(
        billing={"wallet_snapshot_every": rng.choice([2, 5, 11]), "ledger_jsonl_path": sink_path}
    )
    b = make_api()  # a second replica on the same database
    tenants = [a.tenant(f"t{i}") for i in range(2)]
    nh = a.node("n1", max_concurrency=64)

    units: list[Unit] = []
    for _ in range(12):
        tenant_id, th = rng.choice(tenants)
        kind = rng.choice(["cpu", "llm_pod"])
        payload: dict[str, Any] = (
            {"prompt": "hi", "model": "stub"} if kind == "llm_pod" else {"handler": "noop"}
        )
        wu = rng.choice([a, b]).submit(
            th, kind=kind, payload=payload, execution_session_id=f"s{rng.randrange(3)}"
        )
        unit = Unit(wu["id"], tenant_id, cpu_ms=rng.randint(0, 5000))
        if kind == "llm_pod":
            unit.calls = [
                (f"c{i}", rng.randint(0, 3000), rng.randint(0, 3000))
                for i in range(rng.randint(0, 3))
            ]
        units.append(unit)
    tokens = claim_all(a, "n1", nh, len(units))
    for unit in units:
        unit.token = tokens[unit.id]

    stop = threading.Event()
    errors: list[BaseException] = []

    def consumer(db: Database) -> None:
        try:
            while not stop.is_set():
                store.catch_up(db)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    consumers = [threading.Thread(target=consumer, args=(_db(x),)) for x in (a, b)]
    for t in consumers:
        t.start()
    try:
        for (what, unit, i), repeat in _plan(rng, units):
            client = rng.choice([a, b]).client
            if what == "invoke":
                name, tin, tout = unit.calls[i]
                r = invoke(client, nh, unit.id, unit.token, name, tin, tout)
                assert r.status_code == (200 if repeat else 201), r.text
            elif rng.random() < 0.5:
                r = complete(client, nh, unit.id, unit.token, unit.cpu_ms)
                assert r.status_code == 200, r.text
            else:
                report = {"work_unit_id": unit.id, "claim_token": unit.token, "cpu_ms": unit.cpu_ms}
                r = client.post(
                    "/v1/nodes/n1/reports",
                    json={"completions": [report, report] if rng.random() < 0.3 else [report]},
                    headers=nh,
                )
                assert r.status_code == 200, r.text
                assert {c["status"] for c in r.json()["completions"]} == {200}, r.text
            if rng.random() < 0.15:
                wallet_total(client, unit.tenant_id)  # reads catch up too
    finally:
        stop.set()
        for t in consumers:
            t.join()
    assert not errors, errors

    lines = entries(a.client)
    keys = Counter((e["source_event_id"], e["line_item_type"]) for e in lines)
    assert max(keys.values()) == 1
    assert len({e["entry_id"] for e in lines}) == len(lines)
    kinds = Counter(e["line_item_type"] for e in lines)
    assert kinds["workunit_cpu"] == len(units)
    assert kinds["llm_tokens"] == sum(len(u.calls) for u in units)
    assert len(a.events("workunit.completed")) == len(units)
    assert len(a.events("llm.invocation.completed")) == kinds["llm_tokens"]

    for tenant_id, _ in tenants:
        mine = [e for e in lines if e["tenant_id"] == tenant_id]
        expected = sum((u.expected_usd() for u in units if u.tenant_id == tenant_id), Decimal(0))
        assert sum((Decimal(e["amount_usd"]) for e in mine), Decimal(0)) == expected
        assert wallet_total(b.client, tenant_id) == expected

    full, snap = replay(a.client), replay(b.client, from_snapshot=True)
    assert full["identical"] and snap["identical"], (full, snap)
    assert full["replay_digest"] == snap["replay_digest"] == snap["live_digest"]
    assert full["ledger_entries"] == len(lines)
    assert full["jsonl_sink"] == "identical"
    assert sink_path.read_text() == export(b.client)
    assert anomalies(a.client) == []
