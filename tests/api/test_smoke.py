from __future__ import annotations

from tests.api.conftest import Api


def test_submit_poll_claim_complete(api: Api) -> None:
    _, th = api.tenant()
    nh = api.node("node-a")
    unit = api.submit(th)
    assert unit["status"] == "scheduled"
    assert unit["node_id"] == "node-a"
    polled = api.poll("node-a", nh)
    [claim] = polled["claims"]
    assert claim["work_unit"]["id"] == unit["id"]
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/complete",
        json={"claim_token": claim["claim_token"], "result": {"ok": 1}, "cpu_ms": 5},
        headers=nh,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    types = [e["type"] for e in api.events()]
    assert types[-4:] == [
        "workunit.submitted",
        "workunit.scheduled",
        "workunit.claimed",
        "workunit.completed",
    ]


def test_billing_ledger_wallet_replay(api: Api) -> None:
    tenant_id, th = api.tenant()
    nh = api.node("node-a")
    unit = api.submit(th)
    [claim] = api.poll("node-a", nh)["claims"]
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/complete",
        json={"claim_token": claim["claim_token"], "result": None, "cpu_ms": 1234},
        headers=nh,
    )
    assert r.status_code == 200
    ledger = api.client.get("/v1/billing/ledger", headers=th).json()
    [line] = ledger["entries"]
    assert line["line_item_type"] == "workunit_cpu"
    assert line["quantity"] == "1.234000"
    assert line["amount_usd"] == "0.000062"
    wallet = api.client.get(f"/v1/billing/wallets/{tenant_id}", headers=th).json()
    assert wallet["total_usd"] == "0.000062"
    replay = api.client.post("/v1/billing/replay", headers=api.admin()).json()
    assert replay["identical"] is True
    nd = api.client.get("/v1/billing/ledger", headers={**th, "Accept": "application/x-ndjson"})
    assert nd.headers["content-type"].startswith("application/x-ndjson")
    assert len(nd.text.strip().splitlines()) == 1
