"""Helpers of the billing API tests: act as a node (claim, report LLM calls, complete), read the
whole ledger, replay, and compute expected amounts independently of the billing code."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx

from tests.api.conftest import Api, auth
from tests.support.waiting import wait_until

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
NDJSON = "application/x-ndjson"

# version-1 prices (control_plane/billing/pricing.py), restated here on purpose
CPU_RATE = Decimal("0.00005")
STUB_IN, STUB_OUT = Decimal("0.15"), Decimal("0.60")


def usd(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)


def cpu_usd(cpu_ms: int, rate: Decimal = CPU_RATE) -> Decimal:
    return usd(Decimal(cpu_ms) / 1000 * rate)


def token_usd(
    tin: int, tout: int, usd_in: Decimal = STUB_IN, usd_out: Decimal = STUB_OUT
) -> Decimal:
    return usd((tin * usd_in + tout * usd_out) / Decimal(1_000_000))


def claim_all(api: Api, node_id: str, nh: dict[str, str], want: int) -> dict[str, str]:
    """Poll with claim until ``want`` units are claimed; unit id -> claim token."""
    tokens: dict[str, str] = {}

    def claimed() -> bool:
        for c in api.poll(node_id, nh, max_units=100)["claims"]:
            tokens[c["work_unit"]["id"]] = c["claim_token"]
        return len(tokens) >= want

    wait_until(
        f"{want} units claimed",
        claimed,
        10,
        interval=0.02,
        context=lambda: f"claimed {len(tokens)}",
    )
    return tokens


def invocation_body(
    token: str, invocation_id: str, tin: int, tout: int, model: str = "stub"
) -> dict[str, Any]:
    return {
        "claim_token": token,
        "invocation_id": invocation_id,
        "provider": "stub",
        "model": model,
        "tokens_in": tin,
        "tokens_out": tout,
        "total_tokens": tin + tout,
        "latency_ms": 3,
        "estimated_cost_usd": "0.000001",
    }


def invoke(
    client: httpx.Client | Any,
    nh: dict[str, str],
    unit_id: str,
    token: str,
    invocation_id: str,
    tin: int,
    tout: int,
    model: str = "stub",
) -> httpx.Response:
    r: httpx.Response = client.post(
        f"/v1/workunits/{unit_id}/llm-invocations",
        json=invocation_body(token, invocation_id, tin, tout, model),
        headers=nh,
    )
    return r


def complete(
    client: httpx.Client | Any, nh: dict[str, str], unit_id: str, token: str, cpu_ms: int
) -> httpx.Response:
    r: httpx.Response = client.post(
        f"/v1/workunits/{unit_id}/complete",
        json={"claim_token": token, "result": {"ok": True}, "cpu_ms": cpu_ms},
        headers=nh,
    )
    return r


def export(client: httpx.Client | Any, headers: dict[str, str] | None = None) -> str:
    """The ledger as JSONL (the whole selection the headers may see; admin by default)."""
    r = client.get(
        "/v1/billing/ledger", headers={**(headers or auth(ADMIN_TOKEN)), "Accept": NDJSON}
    )
    assert r.status_code == 200, r.text
    return str(r.text)


def entries(
    client: httpx.Client | Any, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every ledger entry through the JSON pages (cursor-paged)."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        r = client.get("/v1/billing/ledger", params=params, headers=headers or auth(ADMIN_TOKEN))
        assert r.status_code == 200, r.text
        page = r.json()
        out.extend(page["entries"])
        if not page["next_cursor"]:
            return out
        params["cursor"] = page["next_cursor"]


def replay(client: httpx.Client | Any, from_snapshot: bool = False) -> dict[str, Any]:
    r = client.post(
        "/v1/billing/replay",
        params={"from_snapshot": "true" if from_snapshot else "false"},
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wallet_total(client: httpx.Client | Any, tenant_id: str) -> Decimal:
    r = client.get(f"/v1/billing/wallets/{tenant_id}", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    return Decimal(r.json()["total_usd"])


def anomalies(client: httpx.Client | Any) -> list[dict[str, Any]]:
    r = client.get("/v1/billing/anomalies", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    return list(r.json()["anomalies"])


def run_units(
    api: Api,
    th: dict[str, str],
    node_id: str,
    nh: dict[str, str],
    cpu_ms: list[int],
    invocations: int = 0,
    kind: str = "cpu",
    session: str = "s1",
) -> list[str]:
    """Submit one unit per ``cpu_ms``, claim them, report ``invocations`` LLM calls on each
    (``tokens_in = 10 + i``, ``tokens_out = 5 + i``) and complete them; their ids in order."""
    payload: dict[str, Any] = (
        {"prompt": "hello", "model": "stub"} if kind == "llm_pod" else {"handler": "noop"}
    )
    ids = [
        api.submit(th, kind=kind, payload=payload, execution_session_id=session)["id"]
        for _ in cpu_ms
    ]
    tokens = claim_all(api, node_id, nh, len(ids))
    for uid, ms in zip(ids, cpu_ms, strict=True):
        for i in range(invocations):
            r = invoke(api.client, nh, uid, tokens[uid], f"inv-{i}", 10 + i, 5 + i)
            assert r.status_code == 201, r.text
        r = complete(api.client, nh, uid, tokens[uid], ms)
        assert r.status_code == 200, r.text
    return ids
