"""Claims, leases, fencing, heartbeats, failures, cancellation and long-polls (API.md, work
units and nodes; DESIGN.md invariants 1 and 5), through real HTTP on both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.api.longpoll import POLL_RECHECK_S
from shared.wire import MAX_WAIT_S
from tests.api.conftest import ADMIN, Api, assert_problem, auth
from tests.support.metrics import waiters
from tests.support.waiting import wait_until


def _events_of(api: Api, unit_id: str, type_: str | None = None) -> list[dict[str, Any]]:
    return api.events(type_, stream_id=unit_id)


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Call(threading.Thread):
    """An HTTP call made in a thread, so the test can act while the server holds it."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.reply: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.reply = self.call()
        except BaseException as exc:  # raised again by result()
            self.error = exc

    def held(self, api: Api) -> Call:
        """Start it and wait until the server holds it (a long-poll counted as a waiter)."""
        self.start()
        wait_until("the request held by the server", lambda: waiters(api.client) >= 1)
        assert self.is_alive(), f"it returned without waiting: {self.reply}"
        return self

    def result(self, timeout: float) -> Any:
        """The reply, once the call returned (within ``timeout``: a guard, see callers)."""
        wait_until("the held request to return", lambda: not self.is_alive(), timeout)
        if self.error is not None:
            raise self.error
        return self.reply


def _claim(api: Api, unit_id: str, attempt: int, headers: dict[str, str]) -> Any:
    return api.client.post(
        f"/v1/workunits/{unit_id}/claim", json={"attempt": attempt}, headers=headers
    )


def test_offer_fanout_first_claim_wins(make_api: Callable[..., Api]) -> None:
    api = make_api(scheduler={"offer_fanout": 2})
    _, tenant = api.tenant()
    heads = {n: api.node(n) for n in ("node-a", "node-b", "node-c")}
    unit = api.submit(tenant)
    [scheduled] = _events_of(api, unit["id"], "workunit.scheduled")
    offered = scheduled["payload"]["offered_to"]
    assert len(offered) == 2 and len(set(offered)) == 2
    assert unit["node_id"] == scheduled["payload"]["node_id"] == offered[0]
    assert scheduled["payload"]["attempt"] == 1
    assert scheduled["payload"]["decision"]
    [outsider] = [n for n in heads if n not in offered]

    # every offered node sees the offer in its poll (without claiming)
    for n in offered:
        [seen] = api.poll(n, heads[n], claim=False)["assignments"]
        assert seen["id"] == unit["id"]
    assert api.poll(outsider, heads[outsider], claim=False)["assignments"] == []

    winner, loser = offered[1], offered[0]  # the runner-up may win too
    r = _claim(api, unit["id"], 1, heads[winner])
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["attempt"] == 1 and reply["claim_token"]
    assert reply["work_unit"]["status"] == "claimed"
    assert reply["work_unit"]["node_id"] == winner
    assert_problem(_claim(api, unit["id"], 1, heads[loser]), 409, "already_claimed")
    assert_problem(_claim(api, unit["id"], 1, heads[outsider]), 409, "not_claimable")
    # a claim for another attempt is not claimable either
    assert_problem(_claim(api, unit["id"], 2, heads[loser]), 409, "not_claimable")
    # asking again for the claim it holds gives the winner the same claim
    again = _claim(api, unit["id"], 1, heads[winner])
    assert again.status_code == 200
    assert again.json()["claim_token"] == reply["claim_token"]

    claimed = _events_of(api, unit["id"], "workunit.claimed")
    assert len(claimed) == 1
    assert claimed[0]["payload"]["node_id"] == winner
    assert claimed[0]["payload"]["attempt"] == 1
    assert claimed[0]["payload"]["lease_expires_at"]
    # the loser's poll no longer offers it; the unit's node_id is the claimer
    assert api.poll(loser, heads[loser], claim=False)["assignments"] == []
    r = api.client.get(f"/v1/workunits/{unit['id']}", headers=tenant)
    assert r.json()["node_id"] == winner and r.json()["status"] == "claimed"


def test_lease_expiry_requeues_then_fails_after_max_attempts(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(leases={"lease_s": 0.5, "reaper_interval_s": 0.1})
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, max_attempts=2)
    [first] = api.poll("node-a", node)["claims"]
    assert first["attempt"] == 1

    expired = api.wait_for_event("workunit.lease_expired", unit["id"])
    assert expired["payload"]["node_id"] == "node-a"
    assert expired["payload"]["attempt"] == 1
    r = api.client.get(f"/v1/workunits/{unit['id']}", headers=tenant)
    after = r.json()
    assert after["attempt"] == 2
    assert after["status"] in ("queued", "scheduled")

    # the old claim is fenced off: every report with it is stale and changes nothing
    before = len(api.events())
    token = first["claim_token"]
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/complete", json={"claim_token": token}, headers=node
    )
    assert_problem(r, 409, "stale_claim")
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/fail", json={"claim_token": token}, headers=node
    )
    assert_problem(r, 409, "stale_claim")
    assert_problem(_claim(api, unit["id"], 1, node), 409)
    assert len(api.events()) == before

    # attempt 2: claimed, never reported, expires -> failed (no attempts left)

    def claimed() -> list[dict[str, Any]]:
        r = api.client.post(
            "/v1/nodes/node-a/poll", json={"wait_s": 2, "claim": True}, headers=node
        )
        return list(r.json()["claims"])

    [second] = wait_until("attempt 2 offered again", claimed, 10, interval=0)
    assert second["attempt"] == 2 and second["claim_token"] != token
    r = api.client.get(f"/v1/workunits/{unit['id']}", params={"wait_s": 10}, headers=tenant)
    final = r.json()
    assert final["status"] == "failed", final
    assert final["attempt"] == 2
    expiries = _events_of(api, unit["id"], "workunit.lease_expired")
    assert [e["payload"]["attempt"] for e in expiries] == [1, 2]
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/complete",
        json={"claim_token": second["claim_token"]},
        headers=node,
    )
    assert_problem(r, 409, "stale_claim")


def test_heartbeat_renews_and_revokes(make_api: Callable[..., Api]) -> None:
    api = make_api(leases={"lease_s": 1.0, "reaper_interval_s": 0.1})
    _, tenant = api.tenant()
    node = api.node("node-a")
    keep = api.submit(tenant)
    drop = api.submit(tenant)
    claims = {c["work_unit"]["id"]: c for c in api.poll("node-a", node)["claims"]}
    assert set(claims) == {keep["id"], drop["id"]}
    running = [keep["id"], drop["id"], "wu_not_mine"]

    r = api.client.post("/v1/nodes/node-a/heartbeat", json={"running": running}, headers=node)
    assert r.status_code == 200, r.text
    beat = r.json()
    assert beat["capacity_mode"] == "OPEN"
    assert sorted(beat["renewed"]) == sorted([keep["id"], drop["id"]])
    assert beat["revoked"] == ["wu_not_mine"]

    # cancel one: the next heartbeat revokes it, and the node's reports on it are stale
    r = api.client.post(f"/v1/workunits/{drop['id']}/cancel", headers=tenant)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = api.client.post("/v1/nodes/node-a/heartbeat", json={"running": running}, headers=node)
    beat = r.json()
    assert beat["renewed"] == [keep["id"]]
    assert sorted(beat["revoked"]) == sorted([drop["id"], "wu_not_mine"])
    r = api.client.post(
        f"/v1/workunits/{drop['id']}/complete",
        json={"claim_token": claims[drop["id"]]["claim_token"]},
        headers=node,
    )
    assert_problem(r, 409, "stale_claim")

    # heartbeats every 0.2 s keep the 1 s lease alive well past its first deadline
    first_deadline = _instant(claims[keep["id"]]["lease_expires_at"])

    def outlived() -> bool:
        r = api.client.post(
            "/v1/nodes/node-a/heartbeat", json={"running": [keep["id"]]}, headers=node
        )
        assert r.json()["renewed"] == [keep["id"]]
        return datetime.now(UTC) > first_deadline + timedelta(seconds=0.5)

    wait_until("the first lease deadline outlived", outlived, interval=0.2)
    assert _events_of(api, keep["id"], "workunit.lease_expired") == []
    r = api.client.post(
        f"/v1/workunits/{keep['id']}/complete",
        json={"claim_token": claims[keep["id"]]["claim_token"], "cpu_ms": 3},
        headers=node,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    [done] = _events_of(api, keep["id"], "workunit.completed")
    assert done["payload"]["node_id"] == "node-a"
    assert done["payload"]["attempt"] == 1
    assert done["payload"]["cpu_ms"] == 3


def test_fail_retryable_requeues_and_non_retryable_fails(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, max_attempts=2)
    [c1] = api.poll("node-a", node)["claims"]
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/fail",
        json={"claim_token": c1["claim_token"], "error": "flaky", "retryable": True},
        headers=node,
    )
    assert r.status_code == 200, r.text
    requeued = r.json()
    assert requeued["attempt"] == 2
    assert requeued["status"] in ("queued", "scheduled")
    # the same failure again is the same answer, and no new event
    before = len(api.events())
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/fail",
        json={"claim_token": c1["claim_token"], "error": "flaky", "retryable": True},
        headers=node,
    )
    assert r.status_code == 200, r.text
    assert len(api.events()) == before
    # attempt 2 fails retryably but no attempts remain: failed
    [c2] = api.poll("node-a", node)["claims"]
    assert c2["attempt"] == 2
    r = api.client.post(
        f"/v1/workunits/{unit['id']}/fail",
        json={"claim_token": c2["claim_token"], "error": {"why": "again"}, "retryable": True},
        headers=node,
    )
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert r.json()["error"] == {"why": "again"}

    other = api.submit(tenant, max_attempts=5)
    [c] = api.poll("node-a", node)["claims"]
    r = api.client.post(
        f"/v1/workunits/{other['id']}/fail",
        json={"claim_token": c["claim_token"], "error": "bad input", "retryable": False},
        headers=node,
    )
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert r.json()["attempt"] == 1
    failed = _events_of(api, other["id"], "workunit.failed")
    assert len(failed) == 1 and failed[0]["payload"]["attempt"] == 1


def test_cancel(api: Api) -> None:
    _, tenant = api.tenant()
    queued = api.submit(tenant)  # no node yet: stays queued
    r = api.client.post(f"/v1/workunits/{queued['id']}/cancel", headers=tenant)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    before = len(api.events())
    assert_problem(
        api.client.post(f"/v1/workunits/{queued['id']}/cancel", headers=tenant),
        409,
        "already_terminal",
    )
    assert_problem(
        api.client.post(f"/v1/workunits/{queued['id']}/cancel", headers=auth(ADMIN)), 409
    )
    assert len(api.events()) == before

    node = api.node("node-a")
    done = api.submit(tenant)
    [c] = api.poll("node-a", node)["claims"]
    r = api.client.post(
        f"/v1/workunits/{done['id']}/complete", json={"claim_token": c["claim_token"]}, headers=node
    )
    assert r.status_code == 200
    assert_problem(api.client.post(f"/v1/workunits/{done['id']}/cancel", headers=tenant), 409)
    # the admin may cancel any tenant's unit; the node can no longer claim it
    scheduled = api.submit(tenant)
    r = api.client.post(f"/v1/workunits/{scheduled['id']}/cancel", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert_problem(_claim(api, scheduled["id"], 1, node), 409, "not_claimable")
    assert api.poll("node-a", node)["claims"] == []
    [ev] = _events_of(api, scheduled["id"], "workunit.cancelled")
    assert ev["tenant_id"] == done["tenant_id"]


def test_a_held_poll_wakes_with_the_work_that_arrives(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    poll = Call(
        lambda: api.client.post(
            "/v1/nodes/node-a/poll", json={"wait_s": MAX_WAIT_S, "claim": True}, headers=node
        )
    ).held(api)  # nothing to offer: the poll waits
    unit = api.submit(tenant)  # placed on node-a while its poll is held
    # By itself the poll would find the unit only at its re-check, POLL_RECHECK_S after it
    # began: back well before that, it was the placement that woke it.
    r = poll.result(timeout=POLL_RECHECK_S / 2)
    assert r.status_code == 200, r.text
    [claim] = r.json()["claims"]
    assert claim["work_unit"]["id"] == unit["id"]
    assert r.json()["assignments"] == []


def test_poll_without_claim_offers_and_empty_after_wait(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    r = api.client.post("/v1/nodes/node-a/poll", json={"wait_s": 0.5}, headers=node)
    assert r.status_code == 200
    assert r.json() == {"assignments": [], "claims": []}
    unit = api.submit(tenant)
    r = api.client.post("/v1/nodes/node-a/poll", json={"wait_s": 0}, headers=node)
    [offer] = r.json()["assignments"]
    assert offer["id"] == unit["id"] and offer["status"] == "scheduled"
    assert r.json()["claims"] == []
    assert _events_of(api, unit["id"], "workunit.claimed") == []


def test_get_with_wait_returns_when_the_unit_completes(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")

    def wait_on(unit_id: str, wait_s: float = MAX_WAIT_S) -> Call:
        url = f"/v1/workunits/{unit_id}"
        return Call(lambda: api.client.get(url, params={"wait_s": wait_s}, headers=tenant))

    def complete(claim: dict[str, Any], result: Any) -> None:
        r = api.client.post(
            f"/v1/workunits/{claim['work_unit']['id']}/complete",
            json={"claim_token": claim["claim_token"], "result": result},
            headers=node,
        )
        assert r.status_code == 200, r.text

    unit = api.submit(tenant)
    [c] = api.poll("node-a", node)["claims"]
    get = wait_on(unit["id"]).held(api)
    complete(c, {"answer": 42})
    r = get.result(timeout=MAX_WAIT_S / 2)  # with the completion, not at the end of its wait
    assert r.status_code == 200
    assert r.json()["status"] == "completed"
    assert r.json()["result"] == {"answer": 42}

    # a change that is not the end (the claim) does not end the wait: it returns completed
    other = api.submit(tenant)
    get = wait_on(other["id"]).held(api)
    [c] = api.poll("node-a", node)["claims"]
    complete(c, "done")
    r = get.result(timeout=MAX_WAIT_S / 2)
    assert r.json()["status"] == "completed", r.json()

    # a wait on a unit that stays open ends with the unit as it is
    third = api.submit(tenant)
    r = api.client.get(f"/v1/workunits/{third['id']}", params={"wait_s": 0.4}, headers=tenant)
    assert r.status_code == 200 and r.json()["status"] in ("queued", "scheduled")


def test_events_wait_wakes_on_new_event(api: Api) -> None:
    _, tenant = api.tenant()
    r = api.client.get("/v1/events", params={"limit": 1000}, headers=tenant)
    last = r.json()["last_seq"]
    tail = Call(
        lambda: api.client.get(
            "/v1/events", params={"after": last, "wait_s": MAX_WAIT_S}, headers=tenant
        )
    ).held(api)
    api.submit(tenant)
    r = tail.result(timeout=MAX_WAIT_S / 2)  # with the new events, not at the end of its wait
    events = r.json()["events"]
    assert events and events[0]["type"] == "workunit.submitted"
    assert all(e["seq"] > last for e in events)
    assert r.json()["last_seq"] == events[-1]["seq"]


def test_unit_events_in_log_order(api: Api) -> None:
    _, tenant = api.tenant()
    node = api.node("node-a")
    unit = api.submit(tenant, kind="llm_pod", payload={"prompt": "hi"})
    [c] = api.poll("node-a", node)["claims"]
    url = f"/v1/workunits/{unit['id']}"
    r = api.client.post(
        f"{url}/llm-invocations",
        json={
            "claim_token": c["claim_token"],
            "invocation_id": "i-1",
            "provider": "stub",
            "model": "gpt-4o-mini",
            "tokens_in": 3,
            "tokens_out": 4,
            "total_tokens": 7,
            "latency_ms": 1,
            "estimated_cost_usd": "0.000001",
        },
        headers=node,
    )
    assert r.status_code == 201, r.text
    r = api.client.post(f"{url}/complete", json={"claim_token": c["claim_token"]}, headers=node)
    assert r.status_code == 200
    r = api.client.get(f"{url}/events", headers=tenant)
    assert r.status_code == 200
    events = r.json()["events"]
    assert [e["type"] for e in events] == [
        "workunit.submitted",
        "workunit.scheduled",
        "workunit.claimed",
        "llm.invocation.completed",
        "workunit.completed",
    ]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    invocation = events[3]["payload"]
    for key in ("invocation_id", "node_id", "attempt", "provider", "model", "tokens_in"):
        assert key in invocation
    assert invocation["pricing"]
    assert r.json() == api.client.get(f"{url}/events", headers=auth(ADMIN)).json()


WORK_UNIT_FIELDS = {
    "id",
    "tenant_id",
    "kind",
    "execution_session_id",
    "priority",
    "region",
    "payload",
    "status",
    "attempt",
    "max_attempts",
    "node_id",
    "result",
    "error",
    "created_at",
    "updated_at",
}


def test_work_unit_shape_and_defaults(api: Api) -> None:
    tenant_id, tenant = api.tenant()
    unit = api.submit(tenant)
    assert set(unit) == WORK_UNIT_FIELDS
    assert unit["tenant_id"] == tenant_id
    assert unit["priority"] == "p1" and unit["region"] is None and unit["max_attempts"] == 3
    assert unit["attempt"] == 1 and unit["status"] == "queued" and unit["node_id"] is None
    for key in ("created_at", "updated_at"):
        stamp = datetime.fromisoformat(unit[key].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0), unit[key]
    r = api.client.get(f"/v1/workunits/{unit['id']}", headers=tenant)
    assert r.json() == unit


def test_drained_node_gets_no_new_placements(api: Api) -> None:
    _, tenant = api.tenant()
    a = api.node("node-a")
    api.node("node-b")
    r = api.client.post("/v1/nodes/node-a/drain", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["drained"] is True
    placed = {api.submit(tenant, execution_session_id=f"s{i}")["node_id"] for i in range(4)}
    assert placed == {"node-b"}
    assert api.poll("node-a", a)["claims"] == []
