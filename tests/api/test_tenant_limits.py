"""Per-tenant limits through the API (``PUT /v1/tenants/{tenant_id}/limits``), on both backends:

- ``max_running``: a tenant never has more units placed or claimed at once than its cap, on a
  node with room for more; another tenant is not held back; each unit that ends lets one more in;
  raising or removing the cap lets the waiting ones in;
- ``submit_rate_per_s`` / ``submit_burst``: a token bucket on submissions; past the burst a
  submit is 429 ``rate_limited`` with a whole-second ``Retry-After`` and appends nothing; after
  the wait it is accepted again; a batch takes one token per unit (per-item 429s);
- only the admin sets limits; each change is a ``tenant.limits.changed`` event; null removes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from tests.api.conftest import JOIN, Api, assert_problem, auth
from tests.support.waiting import wait_until

UNIT: dict[str, Any] = {"kind": "cpu", "execution_session_id": "s", "payload": {"handler": "noop"}}


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _put_limits(
    api: Api, tenant_id: str, headers: dict[str, str] | None = None, **body: Any
) -> Any:
    return api.client.put(
        f"/v1/tenants/{tenant_id}/limits", json=body, headers=headers or api.admin()
    )


def _set_limits(api: Api, tenant_id: str, **body: Any) -> None:
    r = _put_limits(api, tenant_id, **body)
    assert r.status_code == 204, r.text


def _units(api: Api, headers: dict[str, str], status: str) -> list[dict[str, Any]]:
    r = api.client.get("/v1/workunits", params={"status": status, "limit": 1000}, headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def _in_flight(api: Api, headers: dict[str, str]) -> int:
    """The tenant's units placed on a node or claimed by one (one read: one snapshot)."""
    r = api.client.get("/v1/workunits", params={"limit": 1000}, headers=headers)
    assert r.status_code == 200, r.text
    return sum(u["status"] in ("scheduled", "claimed") for u in r.json()["items"])


def _complete(api: Api, node_headers: dict[str, str], claim: dict[str, Any]) -> None:
    r = api.client.post(
        f"/v1/workunits/{claim['work_unit']['id']}/complete",
        json={"claim_token": claim["claim_token"], "result": {}, "cpu_ms": 1},
        headers=node_headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"


def _by_tenant(claims: list[dict[str, Any]]) -> Counter[str]:
    return Counter(c["work_unit"]["tenant_id"] for c in claims)


def _max_in_flight_in_log(api: Api, tenant_id: str) -> int:
    """The most units of the tenant that were ever placed or claimed at once, from the log."""
    ends = {
        "workunit.completed",
        "workunit.failed",
        "workunit.lease_expired",
        "workunit.unscheduled",
        "workunit.cancelled",
    }
    now = peak = 0
    for e in api.events():
        if e["tenant_id"] != tenant_id:
            continue
        if e["type"] == "workunit.scheduled":
            now += 1
        elif e["type"] in ends:
            now = max(0, now - 1)
        peak = max(peak, now)
    return peak


# --------------------------------------------------------------------------- max_running


def test_max_running_caps_one_tenant_and_each_completion_lets_the_next_in(api: Api) -> None:
    capped_id, capped = api.tenant("capped")
    free_id, free = api.tenant("free")
    _set_limits(api, capped_id, max_running=2)
    node = api.node("big", kinds=("cpu",), max_concurrency=10)
    capped_units = [api.submit(capped, execution_session_id=f"c{i}")["id"] for i in range(6)]
    free_units = [api.submit(free, execution_session_id=f"f{i}")["id"] for i in range(8)]

    # placement: 2 of the capped tenant's units, all 8 of the other's, on a node of 10
    assert len(_units(api, capped, "scheduled")) == 2
    assert len(_units(api, capped, "queued")) == 4
    assert len(_units(api, free, "scheduled")) == 8
    offered = api.poll("big", node, claim=False, max_units=100)["assignments"]
    assert Counter(u["tenant_id"] for u in offered) == {capped_id: 2, free_id: 8}

    # claiming: the same 10, nothing more of the capped tenant even when asked for more
    claims = api.poll("big", node, max_units=100)["claims"]
    assert _by_tenant(claims) == {capped_id: 2, free_id: 8}
    assert api.poll("big", node, max_units=100)["claims"] == []
    held = [c for c in claims if c["work_unit"]["tenant_id"] == capped_id]

    # the other tenant finishing frees slots, but the capped tenant stays at 2
    for c in claims:
        if c["work_unit"]["tenant_id"] == free_id:
            _complete(api, node, c)
    assert api.poll("big", node, max_units=100)["claims"] == []
    assert _in_flight(api, capped) == 2
    assert len(_units(api, capped, "queued")) == 4

    # each completion lets exactly one more in, until the queue is empty
    finished = 0
    while held:
        _complete(api, node, held.pop(0))
        finished += 1
        new = api.poll("big", node, max_units=100)["claims"]
        assert _by_tenant(new) == ({capped_id: 1} if finished <= 4 else {})
        held += new
        assert _in_flight(api, capped) == len(held) <= 2
    assert {u["id"] for u in _units(api, capped, "completed")} == set(capped_units)
    assert {u["id"] for u in _units(api, free, "completed")} == set(free_units)
    assert _max_in_flight_in_log(api, capped_id) == 2
    assert _max_in_flight_in_log(api, free_id) == 8


def test_raising_then_removing_max_running_lets_the_waiting_units_in(api: Api) -> None:
    capped_id, capped = api.tenant("capped")
    _set_limits(api, capped_id, max_running=1)
    node = api.node("big", kinds=("cpu",), max_concurrency=10)
    for i in range(6):
        api.submit(capped, execution_session_id=f"c{i}")
    assert _by_tenant(api.poll("big", node)["claims"]) == {capped_id: 1}

    _set_limits(api, capped_id, max_running=3)
    assert _by_tenant(api.poll("big", node)["claims"]) == {capped_id: 2}
    assert _in_flight(api, capped) == 3

    _set_limits(api, capped_id, max_running=None)  # null: no cap
    assert _by_tenant(api.poll("big", node)["claims"]) == {capped_id: 3}
    assert _in_flight(api, capped) == 6
    assert _units(api, capped, "queued") == []


def test_max_running_holds_with_several_nodes_polling_and_completing_at_once(api: Api) -> None:
    capped_id, capped = api.tenant("capped")
    free_id, free = api.tenant("free")
    _set_limits(api, capped_id, max_running=3)
    nodes = {f"n{i}": api.node(f"n{i}", kinds=("cpu",), max_concurrency=10) for i in range(3)}
    body = {"units": [UNIT] * 30}
    for headers in (capped, free):
        r = api.client.post("/v1/workunits/batch", json=body, headers=headers)
        assert [x["status"] for x in r.json()["results"]] == [201] * 30
    peak = 0
    lock = threading.Lock()

    def all_done() -> bool:
        return all(len(_units(api, h, "completed")) == 30 for h in (capped, free))

    def worker(node_id: str) -> int:
        """Poll, complete what was claimed, until every unit of both tenants is done."""
        done = 0

        def step() -> bool:
            nonlocal peak, done
            claims = api.poll(node_id, nodes[node_id], max_units=5)["claims"]
            in_flight = _in_flight(api, capped)
            with lock:
                peak = max(peak, in_flight)
            for c in claims:
                _complete(api, nodes[node_id], c)
                done += 1
            return not claims and all_done()

        wait_until("every unit of both tenants done", step, 60, interval=0)
        return done

    with ThreadPoolExecutor(len(nodes)) as pool:
        done = sum(pool.map(worker, sorted(nodes)))
    assert done == 60
    assert len(_units(api, capped, "completed")) == 30
    assert len(_units(api, free, "completed")) == 30
    assert peak <= 3
    assert _max_in_flight_in_log(api, capped_id) == 3
    assert _max_in_flight_in_log(api, free_id) > 3


# --------------------------------------------------------------------------- submission rate


def test_rate_limit_refuses_past_the_burst_with_retry_after_and_appends_nothing(
    api: Api,
) -> None:
    tenant_id, tenant = api.tenant()
    _set_limits(api, tenant_id, submit_rate_per_s=1, submit_burst=3)

    accepted = 0
    refused = None
    for _ in range(10):
        before = len(api.events())
        r = api.client.post("/v1/workunits", json=UNIT, headers=tenant)
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 201, r.text
        accepted += 1
    assert refused is not None, "never rate limited"
    # The burst, plus what the bucket refilled meanwhile at 1/s (nothing on a quick run: 3,
    # then 429), judged by the control plane's clock: each unit's created_at is the moment
    # its submit took a token.
    stamps = sorted(_instant(u["created_at"]) for u in _units(api, tenant, "queued"))
    refilled_s = (stamps[-1] - stamps[0]).total_seconds()
    assert 3 <= accepted <= 3 + refilled_s * 1, (accepted, refilled_s)
    problem = assert_problem(refused, 429, "rate_limited")
    assert tenant_id in problem["detail"]
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert len(api.events()) == before, "a refused submit appended an event"
    assert len(_units(api, tenant, "queued")) == accepted

    time.sleep(int(retry_after))  # the server said when: then it is accepted again
    r = api.client.post("/v1/workunits", json=UNIT, headers=tenant)
    assert r.status_code == 201, r.text
    assert len(_units(api, tenant, "queued")) == accepted + 1


def test_a_batch_takes_one_token_per_unit(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    other_id, other = api.tenant("other")
    _set_limits(api, tenant_id, submit_rate_per_s=1, submit_burst=3)
    before = Counter(e["type"] for e in api.events())

    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 5}, headers=tenant)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 201, 201, 429, 429]
    for x in results[3:]:
        assert x["error"]["code"] == "rate_limited" and x["error"]["status"] == 429, x
        assert "work_unit" not in x or x["work_unit"] is None
    after = Counter(e["type"] for e in api.events())
    assert after["workunit.submitted"] - before["workunit.submitted"] == 3
    assert len(_units(api, tenant, "queued")) == 3

    # the bucket is empty now: a whole batch is refused and appends nothing
    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 2}, headers=tenant)
    assert [x["status"] for x in r.json()["results"]] == [429, 429]
    assert Counter(e["type"] for e in api.events()) == after

    # another tenant's bucket is its own
    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 10}, headers=other)
    assert [x["status"] for x in r.json()["results"]] == [201] * 10
    assert other_id != tenant_id


def test_concurrent_submits_share_one_bucket(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    # a refill this slow adds no token during the test: exactly the burst gets in
    _set_limits(api, tenant_id, submit_rate_per_s=0.01, submit_burst=5)

    def one(_: int) -> list[int]:
        r = api.client.post("/v1/workunits", json=UNIT, headers=tenant)
        return [r.status_code]

    def batch(_: int) -> list[int]:
        r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 3}, headers=tenant)
        assert r.status_code == 200, r.text
        return [x["status"] for x in r.json()["results"]]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        futures += [pool.submit(batch, i) for i in range(4)]
        statuses = Counter(s for f in futures for s in f.result())
    assert statuses == {201: 5, 429: 19}, statuses
    assert len(_units(api, tenant, "queued")) == 5
    submitted = [e for e in api.events() if e["type"] == "workunit.submitted"]
    assert len(submitted) == 5


def test_a_replayed_idempotent_submit_takes_no_token(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    _set_limits(api, tenant_id, submit_rate_per_s=0.01, submit_burst=1)
    keyed = {**tenant, "Idempotency-Key": "only-once"}
    first = api.client.post("/v1/workunits", json=UNIT, headers=keyed)
    assert first.status_code == 201, first.text
    assert_problem(api.client.post("/v1/workunits", json=UNIT, headers=tenant), 429)
    # the same request again is the same unit, not a new submission: no token needed
    again = api.client.post("/v1/workunits", json=UNIT, headers=keyed)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_null_limits_remove_the_rate_limit(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    _set_limits(api, tenant_id, submit_rate_per_s=1, submit_burst=1)
    assert api.client.post("/v1/workunits", json=UNIT, headers=tenant).status_code == 201
    r = api.client.post("/v1/workunits", json=UNIT, headers=tenant)
    assert_problem(r, 429, "rate_limited")

    _set_limits(api, tenant_id, max_running=None, submit_rate_per_s=None, submit_burst=None)
    for _ in range(5):
        r = api.client.post("/v1/workunits", json=UNIT, headers=tenant)
        assert r.status_code == 201, r.text
    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 20}, headers=tenant)
    assert [x["status"] for x in r.json()["results"]] == [201] * 20

    _set_limits(api, tenant_id, submit_rate_per_s=1, submit_burst=2)  # a new, full bucket
    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 3}, headers=tenant)
    assert [x["status"] for x in r.json()["results"]] == [201, 201, 429]
    _set_limits(api, tenant_id)  # an empty body is all nulls too
    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 3}, headers=tenant)
    assert [x["status"] for x in r.json()["results"]] == [201] * 3


# --------------------------------------------------------------------------- who, and the log


def test_only_the_admin_sets_limits_and_refusals_change_nothing(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    node = api.node("n1")
    before = len(api.events())

    assert_problem(_put_limits(api, tenant_id, tenant, max_running=1), 403)
    assert_problem(_put_limits(api, tenant_id, node, max_running=1), 403)
    assert_problem(_put_limits(api, tenant_id, auth(JOIN), max_running=1), 403)
    r = api.client.put(f"/v1/tenants/{tenant_id}/limits", json={"max_running": 1})
    assert_problem(r, 401)
    assert_problem(_put_limits(api, tenant_id, auth("not-a-token"), max_running=1), 401)
    assert_problem(_put_limits(api, "ten_does_not_exist", max_running=1), 404)
    for bad in (
        {"max_running": 0},
        {"max_running": -1},
        {"max_running": "two"},
        {"submit_rate_per_s": 0},
        {"submit_rate_per_s": -1},
        {"submit_burst": 0},
        {"max_parallel": 3},
    ):
        assert_problem(_put_limits(api, tenant_id, **bad), 422, where=bad)
    assert len(api.events()) == before, "a refused change appended an event"
    # and no limit took hold: the tenant submits freely
    r = api.client.post("/v1/workunits/batch", json={"units": [UNIT] * 10}, headers=tenant)
    assert [x["status"] for x in r.json()["results"]] == [201] * 10


def test_each_change_is_a_tenant_limits_changed_event(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    _, other = api.tenant("other")
    changes: list[dict[str, Any]] = [
        {"max_running": 2},
        {"max_running": 5, "submit_rate_per_s": 2.5, "submit_burst": 10},
        {"submit_rate_per_s": 1},
        {},
    ]
    for body in changes:
        _set_limits(api, tenant_id, **body)
    events = [e for e in api.events() if e["type"] == "tenant.limits.changed"]
    assert len(events) == len(changes)
    for e, body in zip(events, changes, strict=True):
        assert e["tenant_id"] == tenant_id and e["stream_id"] == tenant_id
        payload = e["payload"]
        assert payload["tenant_id"] == tenant_id
        for key in ("max_running", "submit_rate_per_s", "submit_burst"):
            assert payload.get(key) == body.get(key), (key, payload, body)
    # the tenant sees its own changes; another tenant does not
    params: dict[str, str | int] = {"type": "tenant.limits.changed", "limit": 1000}
    mine = api.client.get("/v1/events", params=params, headers=tenant)
    assert mine.status_code == 200, mine.text
    assert [e["seq"] for e in mine.json()["events"]] == [e["seq"] for e in events]
    theirs = api.client.get("/v1/events", params=params, headers=other)
    assert theirs.status_code == 200 and theirs.json()["events"] == []
