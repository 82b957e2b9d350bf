"""Bad input of every class is a 4xx problem with a ``code``, never a 5xx, and appends
nothing to the log (API.md conventions; DESIGN.md invariant 7)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.api.conftest import ADMIN, JOIN, Api, assert_problem, auth

JSON = {"content-type": "application/json"}
GOOD_UNIT: dict[str, Any] = {
    "kind": "cpu",
    "execution_session_id": "s",
    "payload": {"handler": "noop"},
}


def _unit(**changes: Any) -> dict[str, Any]:
    body = dict(GOOD_UNIT)
    body.update(changes)
    return body


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD_UNIT.items() if k != key}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Raw bodies for POST /v1/workunits, each one wrong in its own way.
BAD_SUBMIT_RAW: list[tuple[str, bytes]] = [
    ("truncated", b'{"kind":'),
    ("not-json", b"kind=cpu"),
    ("trailing-garbage", json.dumps(GOOD_UNIT).encode() + b"}"),
    ("not-utf8", b'{"kind":"\xff\xfe"}'),
    ("empty", b""),
    ("array", b"[]"),
    ("string", b'"cpu"'),
    ("null", b"null"),
    ("deeply-nested", _nested(100_000)),
    (
        "payload-too-deep",
        b'{"kind":"cpu","execution_session_id":"s","payload":{"handler":"noop","a":'
        + _nested(300)
        + b"}}",
    ),
    (
        "payload-int-beyond-64-bits",
        b'{"kind":"cpu","execution_session_id":"s","payload":{"handler":"noop","a":'
        + b"1" * 30
        + b"}}",
    ),
    (
        "payload-lone-surrogate",
        b'{"kind":"cpu","execution_session_id":"s","payload":{"handler":"noop","a":"\\ud800"}}',
    ),
    (
        "payload-nan",
        b'{"kind":"cpu","execution_session_id":"s","payload":{"handler":"noop","a":NaN}}',
    ),
    (
        "payload-infinity",
        b'{"kind":"cpu","execution_session_id":"s","payload":{"handler":"noop","a":[1e400]}}',
    ),
    (
        "session-lone-surrogate",
        b'{"kind":"cpu","execution_session_id":"s\\udfff","payload":{"handler":"noop"}}',
    ),
    (
        "session-nul",
        b'{"kind":"cpu","execution_session_id":"s\\u0000","payload":{"handler":"noop"}}',
    ),
]

BAD_SUBMIT_JSON: list[tuple[str, Any]] = [
    ("kind-number", _unit(kind=5)),
    ("kind-unknown", _unit(kind="gpu")),
    ("kind-case", _unit(kind="CPU")),
    ("priority-unknown", _unit(priority="p10")),
    ("priority-upper", _unit(priority="P1")),
    ("priority-number", _unit(priority=1)),
    ("session-missing", _without("execution_session_id")),
    ("session-empty", _unit(execution_session_id="")),
    ("session-number", _unit(execution_session_id=7)),
    ("session-too-long", _unit(execution_session_id="s" * 1000)),
    ("payload-missing", _without("payload")),
    ("payload-list", _unit(payload=["noop"])),
    ("payload-string", _unit(payload="noop")),
    ("kind-missing", _without("kind")),
    ("region-number", _unit(region=3)),
    ("max-attempts-zero", _unit(max_attempts=0)),
    ("max-attempts-string", _unit(max_attempts="three")),
    ("max-attempts-float", _unit(max_attempts=1.5)),
    ("unknown-field", _unit(colour="blue")),
    ("idempotency-key-in-single-body", _unit(idempotency_key="k")),
    ("cpu-without-handler", _unit(payload={"args": {}})),
    ("cpu-handler-not-string", _unit(payload={"handler": 3})),
    ("cpu-handler-empty", _unit(payload={"handler": " "})),
    ("cpu-args-not-object", _unit(payload={"handler": "noop", "args": [1]})),
    ("llm-without-prompt", _unit(kind="llm_pod", payload={"model": "m"})),
    ("llm-empty-payload", _unit(kind="llm_pod", payload={})),
    ("llm-prompt-not-string", _unit(kind="llm_pod", payload={"prompt": 3})),
    ("llm-messages-empty", _unit(kind="llm_pod", payload={"messages": []})),
    ("llm-messages-not-list", _unit(kind="llm_pod", payload={"messages": "hi"})),
    ("llm-max-tokens-zero", _unit(kind="llm_pod", payload={"prompt": "x", "max_tokens": 0})),
    # the agent's own parser (the same schema) would fail these units as non-retryable
    ("llm-messages-strings", _unit(kind="llm_pod", payload={"messages": ["hi"]})),
    ("llm-message-without-role", _unit(kind="llm_pod", payload={"messages": [{"content": "x"}]})),
    (
        "llm-message-content-number",
        _unit(kind="llm_pod", payload={"messages": [{"role": "user", "content": 5}]}),
    ),
    ("llm-model-empty", _unit(kind="llm_pod", payload={"prompt": "x", "model": ""})),
    ("llm-max-tokens-float", _unit(kind="llm_pod", payload={"prompt": "x", "max_tokens": 5.0})),
    ("cpu-timeout-string", _unit(payload={"handler": "noop", "timeout_s": "5"})),
    ("cpu-timeout-bool", _unit(payload={"handler": "noop", "timeout_s": True})),
    ("cpu-timeout-zero", _unit(payload={"handler": "noop", "timeout_s": 0})),
    ("llm-timeout-negative", _unit(kind="llm_pod", payload={"prompt": "x", "timeout_s": -1})),
]


@pytest.fixture
def unchanged(api: Api) -> Callable[[], Any]:
    """``with unchanged(): ...`` fails when the block appended to the log."""
    from contextlib import contextmanager

    @contextmanager
    def check() -> Iterator[None]:
        before = api.events()
        yield
        after = api.events()
        assert len(after) == len(before), [e["type"] for e in after[len(before) :]]

    return check


def test_bad_submissions_are_4xx_and_change_nothing(api: Api, unchanged: Any) -> None:
    _, tenant = api.tenant()
    api.node("node-a")
    with unchanged():
        for name, raw in BAD_SUBMIT_RAW:
            r = api.client.post("/v1/workunits", content=raw, headers={**tenant, **JSON})
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            assert_problem(r, r.status_code)
        for name, body in BAD_SUBMIT_JSON:
            r = api.client.post("/v1/workunits", json=body, headers=tenant)
            assert_problem(r, 422, where=name)
        # the same bodies as batch items (but the key, which a batch item may carry): each
        # item is refused on its own, 200 overall
        items = [(n, b) for n, b in BAD_SUBMIT_JSON if n != "idempotency-key-in-single-body"]
        r = api.client.post(
            "/v1/workunits/batch", json={"units": [b for _, b in items]}, headers=tenant
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(items)
        for (name, _), result in zip(items, results, strict=True):
            assert result["status"] == 422, (name, result)
            assert result["error"]["code"], result
            assert result["error"]["status"] == 422
            assert result.get("work_unit") is None
        # a wrong content type is refused too
        r = api.client.post(
            "/v1/workunits",
            content=json.dumps(GOOD_UNIT),
            headers={**tenant, "content-type": "text/plain"},
        )
        assert 400 <= r.status_code < 500
    r = api.client.get("/v1/workunits", headers=tenant)
    assert r.json()["items"] == []


def test_a_payload_the_agent_cannot_run_is_refused_at_submit_naming_the_field(
    api: Api, unchanged: Any
) -> None:
    _, tenant = api.tenant()
    body = _unit(kind="llm_pod", payload={"messages": ["hi"]})
    with unchanged():
        r = api.client.post("/v1/workunits", json=body, headers=tenant)
        problem = assert_problem(r, 422, "invalid_input")
    assert problem["detail"] == (
        "llm_pod payload 'messages[0]' must be a chat message (an object with a string 'role')"
    )
    # what the agent runs is accepted, with the tenant's extra keys stored as sent
    payload = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "a"}],
        "timeout_s": 2.5,
        "colour": "blue",
    }
    r = api.client.post(
        "/v1/workunits", json=_unit(kind="llm_pod", payload=payload), headers=tenant
    )
    assert r.status_code == 201, r.text
    assert r.json()["payload"] == payload


def test_bad_bodies_on_every_other_route(api: Api, unchanged: Any) -> None:
    tenant_id, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant)
    admin = auth(ADMIN)
    cases: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/tenants", admin, {}),
        ("POST", "/v1/tenants", admin, {"name": ""}),
        ("POST", "/v1/tenants", admin, {"name": 1}),
        ("POST", "/v1/tenants", admin, {"name": "x", "plan": "gold"}),
        ("POST", "/v1/tenants", admin, {"name": "x" * 500}),
        ("POST", "/v1/nodes", auth(JOIN), {"supported_kinds": [], "max_concurrency": 1}),
        ("POST", "/v1/nodes", auth(JOIN), {"supported_kinds": ["gpu"], "max_concurrency": 1}),
        ("POST", "/v1/nodes", auth(JOIN), {"supported_kinds": ["cpu"], "max_concurrency": 0}),
        ("POST", "/v1/nodes", auth(JOIN), {"supported_kinds": ["cpu"]}),
        ("POST", "/v1/nodes", auth(JOIN), {"supported_kinds": "cpu", "max_concurrency": 1}),
        (
            "POST",
            "/v1/nodes",
            auth(JOIN),
            {"node_id": "has space", "supported_kinds": ["cpu"], "max_concurrency": 1},
        ),
        (
            "POST",
            "/v1/nodes",
            auth(JOIN),
            {"supported_kinds": ["cpu"], "max_concurrency": 1, "extra": True},
        ),
        ("POST", "/v1/nodes/node-a/heartbeat", node, {"running": "wu_1"}),
        ("POST", "/v1/nodes/node-a/heartbeat", node, {"running": [], "load": -1}),
        ("POST", "/v1/nodes/node-a/heartbeat", node, {"running": [], "free_slots": -1}),
        ("POST", "/v1/nodes/node-a/heartbeat", node, {"runing": []}),
        ("POST", "/v1/nodes/node-a/poll", node, {"wait_s": 31}),
        ("POST", "/v1/nodes/node-a/poll", node, {"wait_s": -1}),
        ("POST", "/v1/nodes/node-a/poll", node, {"wait_s": "soon"}),
        ("POST", "/v1/nodes/node-a/poll", node, {"max_units": 0}),
        ("POST", "/v1/nodes/node-a/poll", node, {"max_units": 1001}),
        ("POST", "/v1/nodes/node-a/poll", node, {"claim": "maybe"}),
        ("POST", "/v1/nodes/node-a/poll", node, {"wait": 1}),
        ("POST", f"/v1/workunits/{unit['id']}/claim", node, {}),
        ("POST", f"/v1/workunits/{unit['id']}/claim", node, {"attempt": 0}),
        ("POST", f"/v1/workunits/{unit['id']}/claim", node, {"attempt": "one"}),
        ("POST", f"/v1/workunits/{unit['id']}/claim", node, {"attempt": 1, "x": 1}),
        ("POST", f"/v1/workunits/{unit['id']}/complete", node, {}),
        ("POST", f"/v1/workunits/{unit['id']}/complete", node, {"claim_token": "t", "cpu_ms": -1}),
        ("POST", f"/v1/workunits/{unit['id']}/complete", node, {"claim_token": "t", "x": 1}),
        (
            "POST",
            f"/v1/workunits/{unit['id']}/fail",
            node,
            {"claim_token": "t", "retryable": "sometimes"},
        ),
        ("POST", f"/v1/workunits/{unit['id']}/fail", node, {"error": "boom"}),
        ("POST", f"/v1/workunits/{unit['id']}/llm-invocations", node, {"claim_token": "t"}),
        ("PUT", "/v1/capacity/mode", admin, {"mode": "CLOSED", "reason": "x"}),
        ("PUT", "/v1/capacity/mode", admin, {"mode": "open", "reason": "x"}),
        ("PUT", "/v1/capacity/mode", admin, {"reason": "x"}),
        ("PUT", "/v1/capacity/mode", admin, {"mode": "OPEN", "reason": "x", "ttl_s": -5}),
        ("PUT", "/v1/capacity/mode", admin, ["OPEN"]),
        ("POST", "/v1/workunits/batch", tenant, {"units": "all"}),
        ("POST", "/v1/workunits/batch", tenant, {}),
        ("POST", "/v1/workunits/batch", tenant, {"units": [], "extra": 1}),
        ("POST", "/v1/workunits/batch", tenant, [GOOD_UNIT]),
    ]
    with unchanged():
        for method, path, headers, body in cases:
            r = api.client.request(method, path, json=body, headers=headers)
            assert_problem(r, 422, where=(method, path, body))
        for method, path, headers in [
            ("POST", "/v1/tenants", admin),
            ("POST", "/v1/nodes", auth(JOIN)),
            ("POST", "/v1/nodes/node-a/heartbeat", node),
            ("POST", f"/v1/workunits/{unit['id']}/claim", node),
            ("PUT", "/v1/capacity/mode", admin),
        ]:
            r = api.client.request(method, path, content=b"{oops", headers={**headers, **JSON})
            assert 400 <= r.status_code < 500, (path, r.text)
            assert_problem(r, r.status_code)
    assert tenant_id


def test_unrepresentable_values_in_ids_and_queries(api: Api, unchanged: Any) -> None:
    """NUL characters, huge integers and lone surrogates reach the database through paths,
    queries and bodies; PostgreSQL refuses them, and that is the caller's 4xx."""
    tenant_id, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant)
    [claim] = api.poll("node-a", node)["claims"]
    admin = auth(ADMIN)
    token = claim["claim_token"]
    with unchanged():
        for method, path, headers in [
            ("GET", "/v1/workunits/a%00b", tenant),
            ("GET", "/v1/workunits/a%00b/events", tenant),
            ("POST", "/v1/workunits/a%00b/cancel", tenant),
            ("GET", "/v1/nodes/a%00b", admin),
            ("POST", "/v1/nodes/a%00b/drain", admin),
            ("GET", f"/v1/events?after={2**63}", tenant),
            ("GET", f"/v1/events?after={10**30}", admin),
        ]:
            r = api.client.request(method, path, headers=headers)
            assert r.status_code in (404, 422), (path, r.text)
            assert_problem(r, r.status_code)
        r = api.client.get("/v1/workunits?execution_session_id=a%00b", headers=tenant)
        assert r.status_code in (200, 422), r.text  # no such session, or refused
        r = api.client.post(
            f"/v1/workunits/{unit['id']}/claim", json={"attempt": 2**63}, headers=node
        )
        assert 400 <= r.status_code < 500, r.text
        reports: list[tuple[str, bytes]] = [
            ("complete", b'{"claim_token":"%s","result":%s}' % (token.encode(), _nested(300))),
            ("complete", b'{"claim_token":"%s","result":"\\ud800"}' % token.encode()),
            ("complete", b'{"claim_token":"%s","cpu_ms":%s}' % (token.encode(), b"9" * 25)),
            ("fail", b'{"claim_token":"%s","error":%s}' % (token.encode(), b"9" * 25)),
            ("complete", b'{"claim_token":"%s","result":{"x":Infinity}}' % token.encode()),
            ("fail", b'{"claim_token":"%s","error":[NaN]}' % token.encode()),
            ("heartbeat", b'{"running":["a\\ud800"]}'),
            ("heartbeat", b'{"running":["a\\u0000"]}'),
        ]
        for action, raw in reports:
            path = (
                "/v1/nodes/node-a/heartbeat"
                if action == "heartbeat"
                else f"/v1/workunits/{unit['id']}/{action}"
            )
            r = api.client.post(path, content=raw, headers={**node, **JSON})
            if action == "heartbeat" and r.status_code == 200:
                continue  # an id nobody holds may simply come back revoked
            assert 400 <= r.status_code < 500, (action, raw[:60], r.text)
            assert_problem(r, r.status_code)
        r = api.client.put(
            f"/v1/tenants/{tenant_id}/limits",
            content=b'{"max_running": %s}' % (b"9" * 25),
            headers={**admin, **JSON},
        )
        assert 400 <= r.status_code < 500, r.text
    r = api.client.post("/v1/tenants", content=b'{"name": "a\\u0000b"}', headers={**admin, **JSON})
    assert r.status_code in (201, 422), r.text  # SQLite stores NUL; PostgreSQL refuses
    # the claim is still good after all of that
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/complete", json={"claim_token": token}, headers=node
    )
    assert r.status_code == 200, r.text


def test_llm_invocation_money_out_of_range_is_4xx(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, kind="llm_pod", payload={"prompt": "hi"})
    [claim] = api.poll("node-a", node)["claims"]
    before = len(api.events())
    for cost in ["NaN", "-Infinity", 0.5, "abc", True, None]:
        r = api.client.post(
            f"/v1/workunits/{unit['id']}/llm-invocations",
            json=_invocation(claim["claim_token"], "inv-x", estimated_cost_usd=cost),
            headers=node,
        )
        assert_problem(r, 422, where=cost)
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/llm-invocations",
        json=_invocation(claim["claim_token"], "inv-y", tokens_in=2**70),
        headers=node,
    )
    assert_problem(r, 422)
    assert len(api.events()) == before


def test_llm_invocation_money_beyond_decimal_precision_is_4xx(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, kind="llm_pod", payload={"prompt": "hi"})
    [claim] = api.poll("node-a", node)["claims"]
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/llm-invocations",
        json=_invocation(claim["claim_token"], "inv-x", estimated_cost_usd="1e30"),
        headers=node,
    )
    assert_problem(r, 422)


def test_query_parameters(api: Api) -> None:
    _, tenant = api.tenant()
    for path in ["/v1/workunits", "/v1/nodes", "/v1/events"]:
        headers = auth(ADMIN) if path == "/v1/nodes" else tenant
        bad_limits: list[dict[str, Any]] = [{"limit": 1001}, {"limit": 0}, {"limit": -1}]
        for params in [*bad_limits, {"limit": "ten"}]:
            r = api.client.get(path, params=params, headers=headers)
            assert_problem(r, 422, where=(path, params))
        assert api.client.get(path, params={"limit": 1000}, headers=headers).status_code == 200
        if path == "/v1/events":
            continue
        for cursor in ["nope", "x" * 300, "eyJzIjoid29ya3VuaXRzOioiLCJwIjoiYSJ9"]:
            r = api.client.get(path, params={"cursor": cursor}, headers=headers)
            assert_problem(r, 422, "invalid_cursor")


def test_enumerated_filters_and_waits(api: Api) -> None:
    _, tenant = api.tenant()
    unit = api.submit(tenant)
    for status in ["done", "QUEUED", ""]:
        r = api.client.get("/v1/workunits", params={"status": status}, headers=tenant)
        assert_problem(r, 422, where=status)
    for name, value in [("kind", "gpu"), ("kind", "CPU"), ("priority", "p10"), ("priority", "1")]:
        r = api.client.get("/v1/workunits", params={name: value}, headers=tenant)
        assert_problem(r, 422, where=(name, value))
    bad_event_queries: list[dict[str, Any]] = [
        {"type": "workunit.exploded"},
        {"after": -1},
        {"wait_s": 31},
    ]
    for params in bad_event_queries:
        r = api.client.get("/v1/events", params=params, headers=tenant)
        assert_problem(r, 422, where=params)
    for wait in ["31", "-1", "nan", "inf", "later"]:
        r = api.client.get(f"/v1/workunits/{unit['id']}", params={"wait_s": wait}, headers=tenant)
        assert_problem(r, 422, where=wait)
    # valid values are accepted
    for status in ["queued", "scheduled", "claimed", "completed", "failed", "cancelled"]:
        r = api.client.get("/v1/workunits", params={"status": status}, headers=tenant)
        assert r.status_code == 200, r.text


def test_cursor_of_another_list_or_tenant_is_invalid(api: Api) -> None:
    _, a = api.tenant("a")
    _, b = api.tenant("b")
    for _ in range(3):
        api.submit(a)
    for i in range(3):
        api.node(f"node-{i}")
    r = api.client.get("/v1/workunits", params={"limit": 1}, headers=a)
    cursor = r.json()["next_cursor"]
    assert cursor
    # a's cursor is a's: b cannot replay it, nor can it page the nodes
    assert_problem(
        api.client.get("/v1/workunits", params={"cursor": cursor}, headers=b), 422, "invalid_cursor"
    )
    assert_problem(
        api.client.get("/v1/nodes", params={"cursor": cursor}, headers=auth(ADMIN)),
        422,
        "invalid_cursor",
    )
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    assert_problem(
        api.client.get("/v1/workunits", params={"cursor": tampered}, headers=a),
        422,
        "invalid_cursor",
    )
    r = api.client.get("/v1/nodes", params={"limit": 1}, headers=auth(ADMIN))
    node_cursor = r.json()["next_cursor"]
    assert node_cursor
    assert_problem(
        api.client.get("/v1/workunits", params={"cursor": node_cursor}, headers=a),
        422,
        "invalid_cursor",
    )


def test_body_over_the_limit_is_413(make_api: Callable[..., Api]) -> None:
    api = make_api(api={"max_body_bytes": 4096})
    _, tenant = api.tenant()
    before = len(api.events())
    big = json.dumps(_unit(payload={"handler": "noop", "pad": "x" * 8000})).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = api.client.post("/v1/workunits", content=big, headers={**tenant, **JSON})
    assert_problem(r, 413, "payload_too_large")
    r = api.client.post("/v1/workunits", content=chunks(), headers={**tenant, **JSON})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "payload_too_large")
    r = api.client.post("/v1/workunits/batch", content=chunks(), headers={**tenant, **JSON})
    assert_problem(r, 413, "payload_too_large")
    # no token at all: still 413 (the limit is checked before anything reads the body)
    assert_problem(api.client.post("/v1/workunits", content=big, headers=JSON), 413)
    assert len(api.events()) == before
    # just under the limit is fine
    small = json.dumps(_unit(payload={"handler": "noop", "pad": "x" * 3000})).encode()
    assert len(small) < 4096
    r = api.client.post("/v1/workunits", content=small, headers={**tenant, **JSON})
    assert r.status_code == 201, r.text


def test_batch_over_1000_units_is_422_and_stores_nothing(api: Api) -> None:
    _, tenant = api.tenant()
    before = len(api.events())
    r = api.client.post("/v1/workunits/batch", json={"units": [GOOD_UNIT] * 1001}, headers=tenant)
    assert_problem(r, 422)
    assert len(api.events()) == before
    r = api.client.post("/v1/workunits/batch", json={"units": [GOOD_UNIT] * 1000}, headers=tenant)
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == [201] * 1000


def test_batch_with_good_and_bad_items(api: Api) -> None:
    _, tenant = api.tenant()
    api.node("node-a")
    earlier = api.client.post(
        "/v1/workunits", json=GOOD_UNIT, headers={**tenant, "Idempotency-Key": "k-old"}
    ).json()
    before = api.events()
    units: list[Any] = [
        _unit(execution_session_id="a"),  # 201
        _unit(kind="gpu"),  # 422
        _unit(payload={"args": {}}),  # 422: cpu without handler
        {**GOOD_UNIT, "idempotency_key": "k-old"},  # 200: replay of the earlier submit
        {**_unit(execution_session_id="other"), "idempotency_key": "k-old"},  # 409
        {**_unit(execution_session_id="b"), "idempotency_key": "k-new"},  # 201
        {**_unit(execution_session_id="b"), "idempotency_key": "k-new"},  # 200, same unit
        {**_unit(execution_session_id="c"), "idempotency_key": "k-new"},  # 409
        _unit(kind="llm_pod", payload={"prompt": "hi"}),  # 201
    ]
    r = api.client.post("/v1/workunits/batch", json={"units": units}, headers=tenant)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 422, 422, 200, 409, 201, 200, 409, 201]
    for x in results:
        if x["status"] in (200, 201):
            assert x["work_unit"]["id"] and x.get("error") is None
        else:
            assert x.get("work_unit") is None
            assert x["error"]["status"] == x["status"] and x["error"]["code"]
    assert results[3]["work_unit"]["id"] == earlier["id"]
    assert results[4]["error"]["code"] == "idempotency_conflict"
    assert results[7]["error"]["code"] == "idempotency_conflict"
    assert results[5]["work_unit"]["id"] == results[6]["work_unit"]["id"]
    assert results[0]["work_unit"]["execution_session_id"] == "a"
    assert results[8]["work_unit"]["kind"] == "llm_pod"
    # exactly three new units, each submitted once
    new = api.events()[len(before) :]
    submitted = [e["stream_id"] for e in new if e["type"] == "workunit.submitted"]
    assert sorted(submitted) == sorted({results[i]["work_unit"]["id"] for i in (0, 5, 8)})


def test_idempotency_key_replay_and_conflict(api: Api) -> None:
    tenant_id, tenant = api.tenant("a")
    _, other = api.tenant("b")
    key = {"Idempotency-Key": "order-42"}
    r1 = api.client.post("/v1/workunits", json=GOOD_UNIT, headers={**tenant, **key})
    assert r1.status_code == 201, r1.text
    before = api.events()
    r2 = api.client.post("/v1/workunits", json=GOOD_UNIT, headers={**tenant, **key})
    assert r2.status_code == 200, r2.text
    assert r2.json()["id"] == r1.json()["id"]
    # key order and explicit defaults do not make it another body
    same = {"payload": {"handler": "noop"}, "priority": "p1", "execution_session_id": "s",
            "kind": "cpu", "max_attempts": 3, "region": None}  # fmt: skip
    r3 = api.client.post("/v1/workunits", json=same, headers={**tenant, **key})
    assert r3.status_code == 200, r3.text
    assert r3.json()["id"] == r1.json()["id"]
    for changed in [
        _unit(priority="p0"),
        _unit(payload={"handler": "sleep"}),
        _unit(max_attempts=1),
    ]:
        r = api.client.post("/v1/workunits", json=changed, headers={**tenant, **key})
        assert_problem(r, 409, "idempotency_conflict")
    assert len(api.events()) == len(before)
    # keys are scoped to the tenant
    r = api.client.post("/v1/workunits", json=GOOD_UNIT, headers={**other, **key})
    assert r.status_code == 201
    assert r.json()["id"] != r1.json()["id"]
    # a key that is too long is refused
    r = api.client.post(
        "/v1/workunits", json=GOOD_UNIT, headers={**tenant, "Idempotency-Key": "k" * 201}
    )
    assert_problem(r, 422)
    assert tenant_id


def _invocation(token: str, invocation_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "claim_token": token,
        "invocation_id": invocation_id,
        "provider": "stub",
        "model": "gpt-4o-mini",
        "tokens_in": 10,
        "tokens_out": 20,
        "total_tokens": 30,
        "latency_ms": 5,
        "estimated_cost_usd": "0.000010",
    }
    body.update(changes)
    return body


def test_reports_with_a_bogus_claim_token_are_stale(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, kind="llm_pod", payload={"prompt": "hi"})
    [claim] = api.poll("node-a", node)["claims"]
    before = len(api.events())
    bogus = [f"{unit['id']}.1.deadbeef", "nope", claim["claim_token"] + "0", ""]
    for token in bogus:
        for action, body in [
            ("complete", {"claim_token": token, "result": 1}),
            ("fail", {"claim_token": token, "error": "x", "retryable": False}),
            ("llm-invocations", _invocation(token, "inv-bogus")),
        ]:
            r = api.client.post(f"/v1/workunits/{unit['id']}/{action}", json=body, headers=node)
            assert_problem(r, 409, "stale_claim", where=(action, token))
    assert len(api.events()) == before
    r = api.client.get(f"/v1/workunits/{unit['id']}", headers=tenant)
    assert r.json()["status"] == "claimed"
    # reports and claims on a unit that does not exist are 404
    missing = "wu_" + "0" * 26
    for action, body in [
        ("claim", {"attempt": 1}),
        ("complete", {"claim_token": claim["claim_token"]}),
        ("fail", {"claim_token": claim["claim_token"]}),
        ("llm-invocations", _invocation(claim["claim_token"], "inv-1")),
    ]:
        r = api.client.post(f"/v1/workunits/{missing}/{action}", json=body, headers=node)
        assert_problem(r, 404, "not_found")
    assert len(api.events()) == before


def test_repeated_reports_are_200_without_new_events(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, kind="llm_pod", payload={"prompt": "hi"})
    [claim] = api.poll("node-a", node)["claims"]
    url = f"/v1/workunits/{unit['id']}"
    token = claim["claim_token"]
    r = api.client.post(f"{url}/llm-invocations", json=_invocation(token, "inv-1"), headers=node)
    assert r.status_code == 201, r.text
    first = r.json()
    before = len(api.events())
    r = api.client.post(f"{url}/llm-invocations", json=_invocation(token, "inv-1"), headers=node)
    assert r.status_code == 200, r.text
    assert r.json()["seq"] == first["seq"]
    assert r.json()["invocation_id"] == "inv-1"
    r = api.client.post(
        f"{url}/llm-invocations", json=_invocation(token, "inv-1", tokens_out=99), headers=node
    )
    assert_problem(r, 409, "idempotency_conflict")
    assert len(api.events()) == before

    r = api.client.post(f"{url}/complete", json={"claim_token": token, "cpu_ms": 7}, headers=node)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    done = r.json()
    before = len(api.events())
    r = api.client.post(f"{url}/complete", json={"claim_token": token, "cpu_ms": 7}, headers=node)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and r.json()["id"] == done["id"]
    # an invocation reported again after completion is still the same invocation
    r = api.client.post(f"{url}/llm-invocations", json=_invocation(token, "inv-1"), headers=node)
    assert r.status_code == 200, r.text
    assert len(api.events()) == before
    # a report after the end of the claim is stale and changes nothing
    r = api.client.post(f"{url}/fail", json={"claim_token": token, "error": "late"}, headers=node)
    assert_problem(r, 409, "stale_claim")
    r = api.client.post(f"{url}/llm-invocations", json=_invocation(token, "inv-2"), headers=node)
    assert_problem(r, 409, "stale_claim")
    kinds = [e["type"] for e in api.events()[before:]]
    # the late invocation is kept as platform cost (one event), nothing else
    assert kinds in ([], ["llm.invocation.completed"])


def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    _, tenant = api.tenant()
    assert_problem(api.client.get("/v1/nothing-here", headers=tenant), 404)
    assert_problem(api.client.delete("/v1/workunits", headers=tenant), 405)
    assert_problem(api.client.put("/v1/tenants/me", json={}, headers=tenant), 405)


def test_admission_refusal_is_429_with_retry_after_and_changes_nothing(api: Api) -> None:
    _, tenant = api.tenant()
    r = api.client.put(
        "/v1/capacity/mode", json={"mode": "CRITICAL", "reason": "test"}, headers=auth(ADMIN)
    )
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "CRITICAL"
    before = len(api.events())
    r = api.client.post("/v1/workunits", json=_unit(priority="p1"), headers=tenant)
    assert_problem(r, 429, "admission_rejected")
    assert re.fullmatch(r"[0-9]+", r.headers["retry-after"]), r.headers
    r = api.client.post(
        "/v1/workunits/batch", json={"units": [_unit(priority="p5")]}, headers=tenant
    )
    assert r.status_code == 200
    [result] = r.json()["results"]
    assert result["status"] == 429 and result["error"]["code"] == "admission_rejected"
    assert len(api.events()) == before
    # p0 is still admitted in CRITICAL
    r = api.client.post("/v1/workunits", json=_unit(priority="p0"), headers=tenant)
    assert r.status_code == 201, r.text
