"""Billing through the real API on both backends: spend under a lost claim, where LLM tokens are
billed from, price changes, and budgets (one replica and two racing)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from control_plane.settings import Settings
from tests.api.billing_kit import (
    anomalies,
    claim_all,
    complete,
    cpu_usd,
    entries,
    export,
    invoke,
    replay,
    run_units,
    token_usd,
    wallet_total,
)
from tests.api.conftest import ADMIN, JOIN, Api, assert_problem, auth
from tests.support.processes import ControlPlaneProcess, ProcessExited


def test_stale_claim_spend_is_platform_cost(make_api: Callable[..., Api]) -> None:
    api = make_api(leases={"lease_s": 0.3, "reaper_interval_s": 0.1})
    tenant_id, th = api.tenant()
    nh = api.node("n1", max_concurrency=8)
    unit = api.submit(th, kind="llm_pod", payload={"prompt": "hi", "model": "stub"})["id"]
    token = claim_all(api, "n1", nh, 1)[unit]
    api.wait_for_event("workunit.lease_expired", unit)

    r = invoke(api.client, nh, unit, token, "late-call", 1000, 2000)
    assert_problem(r, 409, "stale_claim")
    again = invoke(api.client, nh, unit, token, "late-call", 1000, 2000)
    assert_problem(again, 409, "stale_claim")
    assert_problem(complete(api.client, nh, unit, token, 50), 409, "stale_claim")

    [event] = api.events("llm.invocation.completed")  # recorded once, marked stale
    assert event["payload"]["stale_claim"] is True
    assert [e for e in entries(api.client) if e["work_unit_id"] == unit] == []
    assert wallet_total(api.client, tenant_id) == Decimal(0)
    [platform] = [a for a in anomalies(api.client) if a["kind"] == "platform_cost"]
    assert platform["work_unit_id"] == unit and platform["source_event_id"] == event["event_id"]
    assert "0.001350" in platform["detail"]  # 1000 x 0.15 + 2000 x 0.60 per million
    assert replay(api.client)["identical"] is True


def test_tokens_billed_from_the_completion(make_api: Callable[..., Api]) -> None:
    api = make_api(
        billing={"bill_llm_from_workunit_completed": True, "bill_llm_from_invocation": False}
    )
    tenant_id, th = api.tenant()
    nh = api.node("n1", max_concurrency=8)
    unit = api.submit(th, kind="llm_pod", payload={"prompt": "hi"})["id"]
    token = claim_all(api, "n1", nh, 1)[unit]
    assert invoke(api.client, nh, unit, token, "a", 100, 50).status_code == 201
    assert invoke(api.client, nh, unit, token, "b", 300, 70).status_code == 201
    assert invoke(api.client, nh, unit, token, "c", 7, 9, model="gpt-4o").status_code == 201
    assert complete(api.client, nh, unit, token, 1500).status_code == 200

    lines = entries(api.client)
    assert {e["source_event_id"] for e in lines} == {f"{unit}/completed"}
    tokens = [e for e in lines if e["line_item_type"] == "llm_tokens"]
    by_model = {e["pricing"]["model"]: e for e in tokens}
    assert set(by_model) == {"stub", "gpt-4o"}
    assert by_model["stub"]["quantity"] == "520"  # usage summed per model
    assert Decimal(by_model["stub"]["amount_usd"]) == token_usd(400, 120)
    assert Decimal(by_model["gpt-4o"]["amount_usd"]) == token_usd(
        7, 9, Decimal("2.50"), Decimal("10.00")
    )
    total = sum(Decimal(e["amount_usd"]) for e in lines)
    assert total == cpu_usd(1500) + token_usd(400, 120) + Decimal(by_model["gpt-4o"]["amount_usd"])
    assert wallet_total(api.client, tenant_id) == total
    # the canonical order puts an event's llm_tokens lines before its workunit_cpu line
    kinds = [json.loads(x)["line_item_type"] for x in export(api.client).splitlines()]
    assert kinds == ["llm_tokens", "llm_tokens", "workunit_cpu"]
    assert replay(api.client)["identical"] is True

    # a replica started with the default flags records the change; both states replay
    api2 = make_api()
    unit2 = api2.submit(th, kind="llm_pod", payload={"prompt": "hi"})["id"]
    token2 = claim_all(api2, "n1", nh, 1)[unit2]
    assert invoke(api2.client, nh, unit2, token2, "a", 100, 50).status_code == 201
    assert complete(api2.client, nh, unit2, token2, 10).status_code == 200
    later = [e for e in entries(api2.client) if e["work_unit_id"] == unit2]
    assert sorted(e["source_event_id"] for e in later) == [
        f"{unit2}/completed",
        f"{unit2}/llm/a",
    ]
    assert replay(api2.client)["identical"] is True


def test_both_flags_on_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            billing={"bill_llm_from_workunit_completed": True, "bill_llm_from_invocation": True},
        )
    server = ControlPlaneProcess(
        workdir=tmp_path,
        admin_token=ADMIN,
        join_token=JOIN,
        env={"KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED": "1", "KRAKO_BILL_LLM_FROM_INVOCATION": "1"},
    )
    with pytest.raises(ProcessExited) as refused:
        server.start()
    assert refused.value.returncode != 0
    assert "KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED" in refused.value.log
    assert "twice" in refused.value.log


def test_price_change_bills_later_calls_only(make_api: Callable[..., Api]) -> None:
    api = make_api()
    tenant_id, th = api.tenant()
    nh = api.node("n1", max_concurrency=8)
    run_units(api, th, "n1", nh, [100], invocations=2, kind="llm_pod")
    before = export(api.client)
    version = api.client.get("/v1/billing/prices", headers=th).json()["price_version"]

    r = api.client.put(
        "/v1/billing/prices/stub",
        json={"usd_per_1m_in": "1.5", "usd_per_1m_out": "6"},
        headers=api.admin(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["price_version"] == version + 1
    assert r.json()["models"]["stub"] == {"usd_per_1m_in": "1.5", "usd_per_1m_out": "6"}
    assert api.events("billing.price.changed")[-1]["payload"]["model"] == "stub"
    run_units(api, th, "n1", nh, [100], invocations=2, kind="llm_pod")

    after = export(api.client)
    assert after.startswith(before)  # earlier lines unchanged, byte for byte
    new = [json.loads(x) for x in after[len(before) :].splitlines()]
    tokens = [e for e in new if e["line_item_type"] == "llm_tokens"]
    assert [e["pricing"]["price_version"] for e in tokens] == [version + 1] * 2
    assert [Decimal(e["amount_usd"]) for e in tokens] == [
        token_usd(10, 5, Decimal("1.5"), Decimal(6)),
        token_usd(11, 6, Decimal("1.5"), Decimal(6)),
    ]
    old = [json.loads(x) for x in before.splitlines() if '"llm_tokens"' in x]
    assert [e["pricing"]["price_version"] for e in old] == [version] * 2
    total = sum(Decimal(json.loads(x)["amount_usd"]) for x in after.splitlines())
    assert wallet_total(api.client, tenant_id) == total
    assert replay(api.client)["identical"] is True
    assert replay(api.client, from_snapshot=True)["identical"] is True


def test_budget_refuses_with_402_and_an_event(make_api: Callable[..., Api]) -> None:
    api = make_api()
    tenant_id, th = api.tenant()
    nh = api.node("n1", max_concurrency=8)
    # a noop cpu unit is estimated at 10 s x 0.00005 = 0.0005 USD
    r = api.client.put(
        f"/v1/billing/budgets/{tenant_id}", json={"budget_usd": "0.001000"}, headers=api.admin()
    )
    assert r.status_code == 200, r.text
    first, second = api.submit(th)["id"], api.submit(th)["id"]
    body = {"kind": "cpu", "execution_session_id": "s1", "payload": {"handler": "noop"}}
    refused = assert_problem(
        api.client.post("/v1/workunits", json=body, headers=th), 402, "budget_exhausted"
    )
    assert "0.001000" in refused["detail"]
    [event] = api.events("billing.budget.refused")
    assert event["tenant_id"] == tenant_id
    assert event["payload"] == {
        "tenant_id": tenant_id,
        "budget_usd": "0.001000",
        "spent_usd": "0.000000",
        "committed_usd": "0.001000",
        "requested_usd": "0.000500",
    }
    # finishing the work releases its estimate; what it really cost is spent
    tokens = claim_all(api, "n1", nh, 2)
    for uid in (first, second):
        assert complete(api.client, nh, uid, tokens[uid], 2000).status_code == 200
    api.submit(th)  # 0.0002 spent + 0.0005 requested fits
    reply = api.client.put(
        f"/v1/billing/budgets/{tenant_id}", json={"budget_usd": "0.001000"}, headers=api.admin()
    ).json()
    assert reply["spent_usd"] == "0.000200" and reply["committed_usd"] == "0.000500"
    assert replay(api.client)["identical"] is True


def test_budget_is_exact_across_two_replicas(make_api: Callable[..., Api]) -> None:
    a, b = make_api(), make_api()  # two control planes on one database
    tenant_id, th = a.tenant()
    r = a.client.put(
        f"/v1/billing/budgets/{tenant_id}", json={"budget_usd": "0.005000"}, headers=a.admin()
    )
    assert r.status_code == 200, r.text
    body = {"kind": "cpu", "execution_session_id": "s1", "payload": {"handler": "noop"}}
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def submit(api: Api) -> None:
        start.wait()
        for _ in range(6):
            code = api.client.post("/v1/workunits", json=body, headers=th).status_code
            with lock:
                statuses.append(code)

    threads = [threading.Thread(target=submit, args=(x,)) for x in (a, b, a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {201, 402}, statuses
    assert statuses.count(201) == 10  # 10 x 0.0005 = the budget exactly, never more
    assert statuses.count(402) == 26
    assert len(b.events("billing.budget.refused")) == 26
    reply = b.client.put(
        f"/v1/billing/budgets/{tenant_id}", json={"budget_usd": "0.005000"}, headers=auth(ADMIN)
    ).json()
    assert reply["committed_usd"] == "0.005000"
