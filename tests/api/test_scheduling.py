"""Placement through the real path: fairness across tenants, priorities, trust quarantine,
decisions explained in the log."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api


def _complete(api: Api, node_id: str, headers: dict[str, str], claim: dict[str, Any]) -> None:
    r = api.client.post(
        f"/v1/workunits/{claim['work_unit']['id']}/complete",
        json={"claim_token": claim["claim_token"], "cpu_ms": 1},
        headers=headers,
    )
    assert r.status_code == 200, r.text


def test_a_burst_does_not_starve_another_tenants_single_unit(api: Api) -> None:
    _, a = api.tenant("bursty")
    _, b = api.tenant("quiet")
    unit = {"kind": "cpu", "execution_session_id": "s", "payload": {"handler": "noop"}}
    r = api.client.post("/v1/workunits/batch", json={"units": [unit] * 300}, headers=a)
    assert r.status_code == 200
    single = api.submit(b)
    nh = api.node("only", max_concurrency=1)
    order: list[str] = []
    for _ in range(4):
        [claim] = api.poll("only", nh)["claims"]
        order.append(claim["work_unit"]["id"])
        _complete(api, "only", nh, claim)
    assert single["id"] in order[:3], "the single unit waited behind the burst"


def test_priority_orders_placement(api: Api) -> None:
    _, th = api.tenant()
    low = [api.submit(th, priority="p5") for _ in range(3)]
    high = api.submit(th, priority="p0")
    nh = api.node("n", max_concurrency=1)
    [claim] = api.poll("n", nh)["claims"]
    assert claim["work_unit"]["id"] == high["id"]
    assert low  # queued behind


def test_decision_explains_the_placement(api: Api) -> None:
    _, th = api.tenant()
    api.node("gpu-box", kinds=("llm_pod",))
    api.node("cpu-box", kinds=("cpu",))
    unit = api.submit(th)
    events = api.client.get(f"/v1/workunits/{unit['id']}/events", headers=th).json()["events"]
    [scheduled] = [e for e in events if e["type"] == "workunit.scheduled"]
    decision = scheduled["payload"]["decision"]
    assert scheduled["payload"]["node_id"] == "cpu-box"
    assert decision["chosen"] == "cpu-box"
    assert {"node_id": "gpu-box", "reason": "kind_unsupported"} in decision["excluded"]
    assert decision["candidates"][0]["node_id"] == "cpu-box"


def test_a_failing_node_is_quarantined_and_work_goes_elsewhere(api: Api) -> None:
    _, th = api.tenant()
    bad = api.node("aaa-bad", max_concurrency=1)
    leftover = None
    for _ in range(12):
        unit = api.submit(th, max_attempts=1)
        claims = api.poll("aaa-bad", bad)["claims"]
        if not claims:
            leftover = unit  # the quarantined node no longer gets work
            break
        assert claims[0]["work_unit"]["id"] == unit["id"]
        r = api.client.post(
            f"/v1/workunits/{unit['id']}/fail",
            json={"claim_token": claims[0]["claim_token"], "error": "boom", "retryable": False},
            headers=bad,
        )
        assert r.status_code == 200
    node = api.client.get("/v1/nodes/aaa-bad", headers=api.admin()).json()
    assert node["quarantined"] is True
    changes = api.events("trust.score.changed")
    assert any(e["payload"]["quarantined"] for e in changes)
    assert leftover is not None and leftover["status"] == "queued"
    good = api.node("zzz-good", max_concurrency=1)
    assert api.poll("zzz-good", good)["claims"][0]["work_unit"]["id"] == leftover["id"]


def test_batched_reports_are_per_item_and_idempotent(api: Api) -> None:
    _, th = api.tenant()
    nh = api.node("n", max_concurrency=10)
    units = [api.submit(th) for _ in range(3)]
    claims = api.poll("n", nh)["claims"]
    assert len(claims) == 3
    body = {
        "completions": [
            {"work_unit_id": c["work_unit"]["id"], "claim_token": c["claim_token"], "cpu_ms": 2}
            for c in claims[:2]
        ]
        + [{"work_unit_id": "wu_missing", "claim_token": "x.1.y", "cpu_ms": 1}],
        "failures": [
            {
                "work_unit_id": claims[2]["work_unit"]["id"],
                "claim_token": "bogus.1.token",
                "error": "x",
                "retryable": True,
            }
        ],
    }
    r = api.client.post("/v1/nodes/n/reports", json=body, headers=nh)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert [c["status"] for c in reply["completions"]] == [200, 200, 404]
    assert reply["failures"][0]["status"] == 409
    assert reply["failures"][0]["error"]["code"] == "stale_claim"
    before = len(api.events())
    again = api.client.post("/v1/nodes/n/reports", json=body, headers=nh).json()
    assert [c["status"] for c in again["completions"]] == [200, 200, 404]
    assert len(api.events()) == before  # repeats append nothing
    assert len(api.events("workunit.completed")) == 2
    assert {u["id"] for u in units} >= {c["work_unit"]["id"] for c in claims}
