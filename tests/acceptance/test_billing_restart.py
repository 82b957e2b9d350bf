"""Billing survives a crash (DESIGN.md invariants 2, 3, 5): a real control-plane process with the
JSONL sink and wallet snapshots on, a node (this test, over HTTP) completing a burst of units,
SIGKILL in the middle, a restart on the same database, the rest finished (completions whose
answer was lost are sent again). Every completed unit has exactly one ledger line, with the
amount its cpu_ms gives; replay from zero and from a snapshot is identical; the JSONL file is
the ledger export."""

from __future__ import annotations

import hashlib
import json
import threading
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, JOIN, StartControlPlane, auth
from tests.support.processes import ControlPlaneProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

UNITS = 80
KILL_AFTER = 25
NODE = "billing-node"


def _cpu_ms(unit_id: str) -> int:
    """The cpu_ms this node reports for a unit: the same on every (re)delivery."""
    return int(hashlib.sha256(unit_id.encode()).hexdigest()[:6], 16) % 5000


def _usd(cpu_ms: int) -> Decimal:
    return (Decimal(cpu_ms) / 1000 * Decimal("0.00005")).quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_EVEN
    )


class Node:
    """This test acting as a node agent: poll with claim, complete with cpu_ms."""

    def __init__(self, cp: ControlPlaneProcess) -> None:
        self.cp = cp
        with cp.client() as c:
            r = c.post(
                "/v1/nodes",
                json={"node_id": NODE, "supported_kinds": ["cpu"], "max_concurrency": 500},
                headers=auth(JOIN),
            )
            assert r.status_code == 201, r.text
            self.headers = auth(r.json()["node_token"])
        self.tokens: dict[str, str] = {}  # claimed unit -> claim token
        self.acked: set[str] = set()  # completions answered 200

    def step(self, c: httpx.Client, max_units: int = 10) -> int:
        """One poll and the completions of what it claimed; how many were claimed."""
        r = c.post(
            f"/v1/nodes/{NODE}/poll",
            json={"max_units": max_units, "wait_s": 0.2, "claim": True},
            headers=self.headers,
        )
        assert r.status_code == 200, r.text
        claims = r.json()["claims"]
        for claim in claims:
            self.tokens[claim["work_unit"]["id"]] = claim["claim_token"]
        for claim in claims:
            self.complete(c, claim["work_unit"]["id"])
        return len(claims)

    def complete(self, c: httpx.Client, unit_id: str) -> None:
        r = c.post(
            f"/v1/workunits/{unit_id}/complete",
            json={"claim_token": self.tokens[unit_id], "result": None, "cpu_ms": _cpu_ms(unit_id)},
            headers=self.headers,
        )
        assert r.status_code == 200, r.text
        self.acked.add(unit_id)


def _export(c: httpx.Client) -> str:
    r = c.get("/v1/billing/ledger", headers={**auth(ADMIN), "Accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    return r.text


def _replay(c: httpx.Client, from_snapshot: bool) -> dict[str, Any]:
    r = c.post(
        "/v1/billing/replay",
        params={"from_snapshot": str(from_snapshot).lower()},
        headers=auth(ADMIN),
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_sigkill_mid_burst_bills_every_completion_once(
    control_plane: StartControlPlane, tmp_path: Path
) -> None:
    sink = tmp_path / "ledger" / "ledger.jsonl"
    cp = control_plane(
        KRAKO_LEDGER_JSONL_PATH=str(sink),
        KRAKO_WALLET_SNAPSHOT_EVERY="40",
        KRAKO_LEASE_S="120",
    )
    node = Node(cp)
    with cp.client() as c:
        r = c.post("/v1/tenants", json={"name": "billed"}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        tenant_id, tenant = r.json()["tenant_id"], auth(r.json()["api_key"])
        unit = {"kind": "cpu", "execution_session_id": "burst", "payload": {"handler": "noop"}}
        r = c.post("/v1/workunits/batch", json={"units": [unit] * UNITS}, headers=tenant)
        assert r.status_code == 200, r.text
        units = [res["work_unit"]["id"] for res in r.json()["results"]]
        assert len(set(units)) == UNITS

    failures: list[BaseException] = []

    def burst() -> None:
        with cp.client(timeout=httpx.Timeout(10.0)) as c:
            try:
                while True:
                    node.step(c, max_units=3)
            except httpx.TransportError:
                return  # the process died under us
            except BaseException as exc:
                failures.append(exc)

    worker = threading.Thread(target=burst)
    worker.start()

    def killable() -> bool:
        assert not failures, failures
        assert worker.is_alive(), cp.logs()
        return len(node.acked) >= KILL_AFTER

    wait_until(f"{KILL_AFTER} completions acknowledged", killable, interval=0.005)
    cp.kill()
    worker.join(timeout=20)
    assert not worker.is_alive() and not failures, failures
    assert KILL_AFTER <= len(node.acked) < UNITS

    cp.start()
    with cp.client() as c:
        # completions whose answer was lost: the same completion again is a 200, not a line
        for unit_id in sorted(set(node.tokens) - node.acked):
            node.complete(c, unit_id)

        def all_acked() -> bool:
            node.step(c, max_units=50)
            return len(node.acked) >= UNITS

        if len(node.acked) < UNITS:
            wait_until(
                f"all {UNITS} completions acknowledged",
                all_acked,
                interval=0,  # each step is a long-poll
                context=lambda: f"{len(node.acked)} of {UNITS}\n{cp.logs()}",
            )
        # a late duplicate of every completion changes nothing
        for unit_id in units[:10]:
            node.complete(c, unit_id)

        r = c.get("/v1/workunits", params={"status": "completed", "limit": 1000}, headers=tenant)
        assert sorted(u["id"] for u in r.json()["items"]) == sorted(units)

        text = _export(c)
        lines = [json.loads(x) for x in text.splitlines()]
        assert len(lines) == UNITS, "a line was lost or doubled"
        assert sorted(e["source_event_id"] for e in lines) == sorted(
            f"{u}/completed" for u in units
        )
        assert all(Decimal(e["amount_usd"]) == _usd(_cpu_ms(e["work_unit_id"])) for e in lines)
        expected = sum((_usd(_cpu_ms(u)) for u in units), Decimal(0))
        wallet = c.get(f"/v1/billing/wallets/{tenant_id}", headers=tenant).json()
        assert Decimal(wallet["total_usd"]) == expected

        full, snap = _replay(c, False), _replay(c, True)
        assert full["identical"] and snap["identical"], (full, snap)
        assert full["replay_digest"] == snap["replay_digest"] == full["live_digest"]
        assert snap["from_snapshot_seq"] is not None and full["ledger_entries"] == UNITS
        assert full["jsonl_sink"] in ("identical", "rebuilt")
        assert snap["jsonl_sink"] == "identical"
        assert sink.read_text() == text
