"""Per-tenant limits through the API: max running units, and a submission rate limit."""

from __future__ import annotations

import time

from tests.api.conftest import Api


def _limits(api: Api, tenant_id: str, **body: object) -> int:
    r = api.client.put(f"/v1/tenants/{tenant_id}/limits", json=body, headers=api.admin())
    return r.status_code


def test_max_running_caps_a_tenant_not_the_others(api: Api) -> None:
    capped_id, capped = api.tenant("capped")
    _, free = api.tenant("free")
    assert _limits(api, capped_id, max_running=2) == 204
    nh = api.node("big", max_concurrency=10)
    for _ in range(5):
        api.submit(capped)
        api.submit(free)
    claims = api.poll("big", nh, max_units=10)["claims"]
    by_tenant: dict[str, int] = {}
    for c in claims:
        by_tenant[c["work_unit"]["tenant_id"]] = by_tenant.get(c["work_unit"]["tenant_id"], 0) + 1
    assert by_tenant[capped_id] == 2
    assert sum(by_tenant.values()) == 7  # the other tenant's 5 are not held back
    done = next(c for c in claims if c["work_unit"]["tenant_id"] == capped_id)
    r = api.client.post(
        f"/v1/workunits/{done['work_unit']['id']}/complete",
        json={"claim_token": done["claim_token"], "cpu_ms": 1},
        headers=nh,
    )
    assert r.status_code == 200
    [next_one] = api.poll("big", nh, max_units=10)["claims"]
    assert next_one["work_unit"]["tenant_id"] == capped_id  # one finished, one more may run
    changes = api.events("tenant.limits.changed")
    assert changes[-1]["payload"]["max_running"] == 2


def test_rate_limit_answers_429_with_retry_after_and_appends_nothing(api: Api) -> None:
    tenant_id, th = api.tenant()
    assert _limits(api, tenant_id, submit_rate_per_s=0.5, submit_burst=3) == 204
    for _ in range(3):
        api.submit(th)
    before = len(api.events())
    body = {"kind": "cpu", "execution_session_id": "s", "payload": {"handler": "noop"}}
    r = api.client.post("/v1/workunits", json=body, headers=th)
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "rate_limited"
    wait = int(r.headers["Retry-After"])
    assert wait >= 1
    assert len(api.events()) == before
    batch = api.client.post("/v1/workunits/batch", json={"units": [body] * 2}, headers=th)
    assert [x["status"] for x in batch.json()["results"]] == [429, 429]
    time.sleep(wait)
    assert api.client.post("/v1/workunits", json=body, headers=th).status_code == 201
    assert _limits(api, tenant_id) == 204  # null: no limits
    for _ in range(5):
        assert api.client.post("/v1/workunits", json=body, headers=th).status_code == 201


def test_only_the_admin_sets_limits(api: Api) -> None:
    tenant_id, th = api.tenant()
    r = api.client.put(f"/v1/tenants/{tenant_id}/limits", json={"max_running": 1}, headers=th)
    assert r.status_code == 403
    assert _limits(api, "ten_missing", max_running=1) == 404
    assert _limits(api, tenant_id, max_running=0) == 422
