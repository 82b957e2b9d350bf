"""The auth matrix of API.md, through real HTTP on both backends.

No token or an unknown one: 401. A valid token of the wrong role, a node token on another
node's path, the join token anywhere but node registration: 403. Another tenant's unit:
404, indistinguishable from a unit that does not exist; its events are invisible.
"""

from __future__ import annotations

from typing import Any

from tests.api.conftest import ADMIN, JOIN, Api, assert_problem, auth

# (method, path template, json body) of every authenticated route; {unit} and {node} are
# filled with a real unit and node so that only the caller's identity decides the answer.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/tenants", {"name": "x"}),
    ("GET", "/v1/tenants/me", None),
    ("POST", "/v1/workunits", {"kind": "cpu", "execution_session_id": "s", "payload": {}}),
    ("POST", "/v1/workunits/batch", {"units": []}),
    ("GET", "/v1/workunits", None),
    ("GET", "/v1/workunits/{unit}", None),
    ("GET", "/v1/workunits/{unit}/events", None),
    ("POST", "/v1/workunits/{unit}/cancel", None),
    ("POST", "/v1/workunits/{unit}/claim", {"attempt": 1}),
    ("POST", "/v1/workunits/{unit}/complete", {"claim_token": "x"}),
    ("POST", "/v1/workunits/{unit}/fail", {"claim_token": "x"}),
    ("POST", "/v1/nodes", {"supported_kinds": ["cpu"], "max_concurrency": 1}),
    ("POST", "/v1/nodes/{node}/heartbeat", {"running": []}),
    ("POST", "/v1/nodes/{node}/poll", {"wait_s": 0}),
    ("POST", "/v1/nodes/{node}/drain", None),
    ("GET", "/v1/nodes", None),
    ("GET", "/v1/nodes/{node}", None),
    ("GET", "/v1/events", None),
    ("GET", "/v1/capacity", None),
    ("PUT", "/v1/capacity/mode", {"mode": "OPEN", "reason": "test"}),
    ("DELETE", "/v1/capacity/mode", None),
    ("POST", "/v1/nodes/{node}/reports", {"completions": [], "failures": []}),
    ("PUT", "/v1/tenants/{tenant}/limits", {}),
    ("GET", "/v1/billing/ledger", None),
    ("GET", "/v1/billing/wallets/{tenant}", None),
    ("POST", "/v1/billing/replay", None),
    ("GET", "/v1/billing/anomalies", None),
    ("GET", "/v1/billing/prices", None),
    ("PUT", "/v1/billing/budgets/{tenant}", {"budget_usd": "1.000000"}),
]

# who may call each route (the rest get 403)
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/tenants"): {"admin"},
    ("GET", "/v1/tenants/me"): {"tenant"},
    ("POST", "/v1/workunits"): {"tenant"},
    ("POST", "/v1/workunits/batch"): {"tenant"},
    ("GET", "/v1/workunits"): {"tenant", "admin"},
    ("GET", "/v1/workunits/{unit}"): {"tenant", "admin"},
    ("GET", "/v1/workunits/{unit}/events"): {"tenant", "admin"},
    ("POST", "/v1/workunits/{unit}/cancel"): {"tenant", "admin"},
    ("POST", "/v1/workunits/{unit}/claim"): {"node"},
    ("POST", "/v1/workunits/{unit}/complete"): {"node"},
    ("POST", "/v1/workunits/{unit}/fail"): {"node"},
    ("POST", "/v1/nodes"): {"join"},
    ("POST", "/v1/nodes/{node}/heartbeat"): {"node"},
    ("POST", "/v1/nodes/{node}/poll"): {"node"},
    ("POST", "/v1/nodes/{node}/drain"): {"admin"},
    ("GET", "/v1/nodes"): {"admin"},
    ("GET", "/v1/nodes/{node}"): {"admin"},
    ("GET", "/v1/events"): {"tenant", "admin"},
    ("GET", "/v1/capacity"): {"tenant", "admin"},
    ("PUT", "/v1/capacity/mode"): {"admin"},
    ("DELETE", "/v1/capacity/mode"): {"admin"},
    ("POST", "/v1/nodes/{node}/reports"): {"node"},
    ("PUT", "/v1/tenants/{tenant}/limits"): {"admin"},
    ("GET", "/v1/billing/ledger"): {"tenant", "admin"},
    ("GET", "/v1/billing/wallets/{tenant}"): {"tenant", "admin"},
    ("POST", "/v1/billing/replay"): {"admin"},
    ("GET", "/v1/billing/anomalies"): {"admin"},
    ("GET", "/v1/billing/prices"): {"tenant", "admin"},
    ("PUT", "/v1/billing/budgets/{tenant}"): {"admin"},
}


def _call(
    api: Api,
    method: str,
    template: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    unit: str = "wu_missing",
    node: str = "node-a",
    tenant: str = "ten_missing",
) -> Any:
    path = template.format(unit=unit, node=node, tenant=tenant)
    return api.client.request(method, path, json=body, headers=headers)


BAD_HEADERS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer not-a-token-we-know-0123456789"},
    {"Authorization": "Bearer " + ADMIN + "x"},
]


def test_no_or_unknown_token_is_401_everywhere(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    unit = api.submit(tenant)["id"]
    api.node("node-a")
    before = len(api.events())
    for headers in BAD_HEADERS:
        for method, template, body in ROUTES:
            r = _call(api, method, template, body, headers, unit=unit, tenant=tenant_id)
            problem = assert_problem(r, 401, "unauthorized")
            assert problem["detail"], (method, template)
    assert len(api.events()) == before


def test_wrong_role_is_403(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant)["id"]
    callers = {"admin": auth(ADMIN), "tenant": tenant, "node": node, "join": auth(JOIN)}
    before = len(api.events())
    checked = 0
    for method, template, body in ROUTES:
        allowed = ALLOWED[(method, template)]
        for role, headers in callers.items():
            if role in allowed:
                continue
            r = _call(api, method, template, body, headers, unit=unit, tenant=tenant_id)
            assert_problem(r, 403, "forbidden", where=(role, method, template))
            checked += 1
    assert checked > 40
    assert len(api.events()) == before
    # and nothing was done on the way: the unit is untouched
    r = api.client.get(f"/v1/workunits/{unit}", headers=tenant)
    assert r.json()["status"] == "scheduled"


def test_join_token_only_registers_nodes(api: Api) -> None:
    r = api.client.post(
        "/v1/nodes",
        json={"supported_kinds": ["cpu"], "max_concurrency": 1},
        headers=auth(JOIN),
    )
    assert r.status_code == 201, r.text
    node_id = r.json()["node_id"]
    for method, path in [
        ("GET", "/v1/workunits"),
        ("GET", "/v1/events"),
        ("GET", "/v1/capacity"),
        ("GET", "/v1/nodes"),
        ("POST", f"/v1/nodes/{node_id}/heartbeat"),
        ("POST", f"/v1/nodes/{node_id}/poll"),
    ]:
        body: dict[str, Any] | None = {} if method == "POST" else None
        assert_problem(api.client.request(method, path, json=body, headers=auth(JOIN)), 403)


def test_node_token_on_another_nodes_path_is_403(api: Api) -> None:
    a = api.node("node-a")
    api.node("node-b")
    before = len(api.events())
    for action, body in [
        ("heartbeat", {"running": []}),
        ("poll", {"wait_s": 0}),
        ("reports", {"completions": [], "failures": []}),
    ]:
        r = api.client.post(f"/v1/nodes/node-b/{action}", json=body, headers=a)
        assert_problem(r, 403, "forbidden")
        # even for a node that does not exist: the token decides first
        r = api.client.post(f"/v1/nodes/node-zzz/{action}", json=body, headers=a)
        assert_problem(r, 403, "forbidden")
    assert len(api.events()) == before


def test_node_reports_on_a_unit_it_does_not_hold_are_stale(api: Api) -> None:
    _, tenant = api.tenant()
    a = api.node("node-a", max_concurrency=1)
    unit = api.submit(tenant)
    [claim] = api.poll("node-a", a)["claims"]
    b = api.node("node-b")
    before = len(api.events())
    token = claim["claim_token"]
    for action, body in [
        ("complete", {"claim_token": token, "result": 1}),
        ("fail", {"claim_token": token, "error": "x"}),
    ]:
        r = api.client.post(f"/v1/workunits/{unit['id']}/{action}", json=body, headers=b)
        assert_problem(r, 409, "stale_claim")
    assert len(api.events()) == before


def test_reregistration_retires_the_old_node_token(api: Api) -> None:
    old = api.node("node-a")
    assert api.client.post("/v1/nodes/node-a/heartbeat", json={}, headers=old).status_code == 200
    new = api.node("node-a")
    assert api.client.post("/v1/nodes/node-a/heartbeat", json={}, headers=new).status_code == 200
    r = api.client.post("/v1/nodes/node-a/heartbeat", json={}, headers=old)
    assert_problem(r, 401, "unauthorized")


def test_401_carries_www_authenticate(api: Api) -> None:
    r = api.client.get("/v1/workunits")
    assert_problem(r, 401)
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


def _masked(problem: dict[str, Any], unit_id: str) -> dict[str, Any]:
    return {k: (v.replace(unit_id, "ID") if isinstance(v, str) else v) for k, v in problem.items()}


def test_another_tenants_unit_is_indistinguishable_from_missing(api: Api) -> None:
    _, a = api.tenant("a")
    b_id, b = api.tenant("b")
    theirs = api.submit(b, execution_session_id="shared-session")
    mine = api.submit(a, execution_session_id="shared-session")
    missing = "wu_" + "0" * 26
    before = len(api.events())

    for method, suffix in [("GET", ""), ("GET", "/events"), ("POST", "/cancel")]:
        r_theirs = api.client.request(method, f"/v1/workunits/{theirs['id']}{suffix}", headers=a)
        r_missing = api.client.request(method, f"/v1/workunits/{missing}{suffix}", headers=a)
        p_theirs = assert_problem(r_theirs, 404, "not_found")
        p_missing = assert_problem(r_missing, 404, "not_found")
        assert _masked(p_theirs, theirs["id"]) == _masked(p_missing, missing)
        assert set(r_theirs.headers) == set(r_missing.headers)
    # a wait on their unit is refused just the same
    r = api.client.get(f"/v1/workunits/{theirs['id']}", params={"wait_s": 1}, headers=a)
    assert_problem(r, 404, "not_found")

    # listing: only my own units, even filtered by a session id both tenants use
    for params in [{}, {"execution_session_id": "shared-session"}, {"status": "queued"}]:
        r = api.client.get("/v1/workunits", params=params, headers=a)
        assert r.status_code == 200, r.text
        ids = {u["id"] for u in r.json()["items"]}
        assert ids == {mine["id"]}, params

    # events: none of b's, nothing about b's unit
    r = api.client.get("/v1/events", params={"limit": 1000}, headers=a)
    assert r.status_code == 200
    events = r.json()["events"]
    assert events, "a sees its own events"
    assert all(e["tenant_id"] != b_id for e in events)
    assert all(e["stream_id"] != theirs["id"] for e in events)
    r = api.client.get(
        "/v1/events", params={"limit": 1000, "type": "workunit.submitted"}, headers=a
    )
    assert [e["stream_id"] for e in r.json()["events"]] == [mine["id"]]

    # billing: b's wallet is as missing as a tenant that does not exist; a's ledger is a's
    r_theirs = api.client.get(f"/v1/billing/wallets/{b_id}", headers=a)
    r_missing = api.client.get("/v1/billing/wallets/ten_missing", headers=a)
    p_theirs = assert_problem(r_theirs, 404, "not_found")
    p_missing = assert_problem(r_missing, 404, "not_found")
    assert _masked(p_theirs, b_id) == _masked(p_missing, "ten_missing")
    r = api.client.get("/v1/billing/ledger", params={"tenant_id": b_id}, headers=a)
    assert r.status_code == 200
    assert all(e["tenant_id"] != b_id for e in r.json()["entries"])

    # cancelling was refused and changed nothing
    assert len(api.events()) == before
    r = api.client.get(f"/v1/workunits/{theirs['id']}", headers=b)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    # the admin sees both
    r = api.client.get("/v1/workunits", headers=auth(ADMIN))
    assert {u["id"] for u in r.json()["items"]} == {mine["id"], theirs["id"]}


def test_tenant_event_wait_does_not_wake_for_other_tenants(api: Api) -> None:
    _, a = api.tenant("a")
    _, b = api.tenant("b")
    r = api.client.get("/v1/events", params={"limit": 1000}, headers=a)
    last = r.json()["last_seq"]
    api.submit(b)
    # a's view past its last seq stays empty (b's new events are not a's)
    r = api.client.get("/v1/events", params={"after": last, "wait_s": 0.3}, headers=a)
    assert r.status_code == 200
    assert r.json()["events"] == []
    assert r.json()["last_seq"] == last


def test_tenant_me_and_admin_paths(api: Api) -> None:
    tenant_id, a = api.tenant("acme")
    r = api.client.get("/v1/tenants/me", headers=a)
    assert r.status_code == 200
    assert r.json() == {"tenant_id": tenant_id, "name": "acme"}
    assert api.client.get("/v1/nodes", headers=auth(ADMIN)).status_code == 200
    assert_problem(api.client.get("/v1/nodes/nope", headers=auth(ADMIN)), 404, "not_found")
    assert_problem(api.client.post("/v1/nodes/nope/drain", headers=auth(ADMIN)), 404)
