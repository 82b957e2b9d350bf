from __future__ import annotations

from tests.api.conftest import Api


def test_submit_poll_claim_complete(api: Api) -> None:
    tenant_id, th = api.tenant()
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
