"""The autoscaler wired into the control plane: the real tick on a real database (both
backends), short timings, driven through the API.

- a pressure ramp on one single-slot node goes OPEN -> THROTTLED -> CRITICAL (each an event
  with its inputs; CRITICAL refuses p1 with 429 + Retry-After) and back to OPEN once drained;
- noise between the thresholds changes nothing;
- a manual override holds until DELETE or its TTL; setting the mode already in force appends
  no mode change but still pins it (``capacity.override.set``);
- with two replicas only the lease holder decides; the other takes over when it stops, or,
  when it dies without a word, once the lease expires;
- the webhook actuator signs its body and retries after a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.capacity import leader
from control_plane.capacity.actuators import (
    ACTUATORS,
    Actuator,
    KubernetesActuator,
    LocalActuator,
    ScaleAction,
    WebhookActuator,
    build_actuator,
)
from control_plane.capacity.autoscaler import (
    LEASE_NAME,
    AutoscalerService,
    params_from_settings,
    run_tick,
)
from control_plane.db.engine import Database
from control_plane.db.uow import read_connection, write_transaction
from tests.api.conftest import Api, assert_problem, make_settings
from tests.support.waiting import wait_until

FAST: dict[str, Any] = {  # the autoscaler group, with short timings
    "interval_s": 0.1,
    "min_hold_s": 0.3,
    "scale_up_cooldown_s": 0.0,
    "scale_down_window_s": 0.5,
    "idle_hold_s": 0.25,
}
MODE_CHANGED = "capacity.admission.mode.changed"
SCALE_REQUESTED = "capacity.scale.requested"


def capacity(api: Api) -> dict[str, Any]:
    r = api.client.get("/v1/capacity", headers=api.admin())
    assert r.status_code == 200, r.text
    return dict(r.json())


def mode_is(api: Api, mode: str) -> Callable[[], bool]:
    return lambda: capacity(api)["mode"] == mode


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def last_tick(api: Api) -> datetime:
    """When the leader last decided, by the control plane's clock."""
    decision = wait_until("a decision of the autoscaler", lambda: capacity(api)["last_decision"])
    return _instant(decision["tick_at"])


def ticked_for(api: Api, seconds: float) -> Callable[[], bool]:
    """A predicate: has the leader ticked ``seconds`` (of its own clock) past its last tick
    now? Unlike a sleep, it shows that the ticks in between really ran."""
    since = last_tick(api)
    return lambda: last_tick(api) >= since + timedelta(seconds=seconds)


def tick_through(api: Api, seconds: float) -> None:
    """Wait until the leader has been ticking for ``seconds`` of its clock from now."""
    wait_until(f"{seconds} s of autoscaler ticks", ticked_for(api, seconds))


def service(api: Api) -> AutoscalerService:
    return api.services.autoscaler


def lease_holder(api: Api) -> str | None:
    with read_connection(api.services.db) as conn:
        held = leader.holder_of(conn, LEASE_NAME)
    return held[0] if held else None


def drain(api: Api, node_id: str, node: dict[str, str], expected: int, timeout: float = 20) -> int:
    """Claim and complete as the node until ``expected`` units are done; returns how many."""
    done = 0

    def drained() -> bool:
        nonlocal done
        for c in api.poll(node_id, node, claim=True, max_units=10)["claims"]:
            r = api.client.post(
                f"/v1/workunits/{c['work_unit']['id']}/complete",
                json={"claim_token": c["claim_token"], "cpu_ms": 1},
                headers=node,
            )
            assert r.status_code == 200, r.text
            done += 1
        return done >= expected

    wait_until(
        f"{expected} units drained",
        drained,
        timeout,
        interval=0.02,
        context=lambda: f"drained only {done}",
    )
    return done


def transitions(api: Api) -> list[tuple[str, str, str]]:
    return [
        (e["payload"]["from"], e["payload"]["to"], e["payload"]["source"])
        for e in api.events(MODE_CHANGED)
    ]


def test_pressure_ramp_climbs_the_ladder_and_comes_back(make_api: Callable[..., Api]) -> None:
    api = make_api(autoscaler=FAST)
    _, tenant = api.tenant()
    node = api.node("n1", max_concurrency=1)

    for _ in range(6):  # one fills the only slot, five wait: 5 per slot >= 4
        api.submit(tenant)
    wait_until("THROTTLED", mode_is(api, "THROTTLED"))
    for _ in range(14):  # 19 p1 units per slot >= 16
        r = api.client.post(
            "/v1/workunits",
            json={"kind": "cpu", "execution_session_id": "s1", "payload": {"handler": "noop"}},
            headers=tenant,
        )
        if r.status_code == 429:  # a tick already saw enough backlog: CRITICAL mid-burst
            assert_problem(r, 429, "admission_rejected")
            break
        assert r.status_code == 201, r.text
    wait_until("CRITICAL", mode_is(api, "CRITICAL"))

    report = capacity(api)
    assert report["queue_depth"]["p1"] >= 16
    decision = report["last_decision"]
    assert decision["mode"] == "CRITICAL" and decision["inputs"]["total_slots"] == 1
    assert decision["inputs"]["utilization"] == 1.0  # the slot is taken (offered or claimed)
    assert decision["replica"] == service(api).holder

    refused = api.client.post(
        "/v1/workunits",
        json={"kind": "cpu", "execution_session_id": "s1", "payload": {"handler": "noop"}},
        headers=tenant,
    )
    assert_problem(refused, 429, "admission_rejected")
    assert int(refused.headers["Retry-After"]) >= 1
    api.submit(tenant, priority="p0")  # p0 still gets in

    up = api.events(MODE_CHANGED)
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in up] == [
        ("OPEN", "THROTTLED"),
        ("THROTTLED", "CRITICAL"),
    ]
    for e in up:
        p = e["payload"]
        assert p["source"] == "autoscaler" and p["reason"]
        assert p["inputs"]["utilization"] == 1.0 and p["inputs"]["total_slots"] == 1
        assert p["inputs"]["queue_depth"]["p1"] == p["inputs"]["queued"]
    assert up[0]["payload"]["inputs"]["backlog_per_slot"] >= 4
    assert up[1]["payload"]["inputs"]["backlog_per_slot_p0_p1"] >= 16

    # the backlog also asked for nodes: an event with its inputs, and desired_nodes shows it
    scale = api.events(SCALE_REQUESTED)
    # (a tick may land mid-burst and ask for 1 first: the ask grows with the backlog)
    assert scale and scale[0]["payload"]["from"] == 0
    assert max(e["payload"]["to"] for e in scale) >= 2
    for e in scale:
        assert e["payload"]["inputs"]["recommended_nodes"] == e["payload"]["to"]
    assert capacity(api)["desired_nodes"] == scale[-1]["payload"]["to"]

    drain(api, "n1", node, expected=21)
    wait_until("OPEN", mode_is(api, "OPEN"))
    path = transitions(api)
    assert all(source == "autoscaler" for _, _, source in path)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(path)), path
    assert path[-1][1] == "OPEN"
    # held p1 work may refill the slot once THROTTLED lets it through; never more than that
    assert len(path) <= 8, path
    tick_through(api, 0.5)
    assert transitions(api) == path  # settled: idle and empty changes nothing more
    # a scale-down followed once the recommendation stayed low for the window
    wait_until("scale down", lambda: capacity(api)["desired_nodes"] == 0, timeout=5)


def test_noise_between_the_thresholds_changes_nothing(make_api: Callable[..., Api]) -> None:
    api = make_api(autoscaler=FAST)
    _, tenant = api.tenant()
    node = api.node("n1", max_concurrency=1)
    for _ in range(6):
        api.submit(tenant)
    wait_until("THROTTLED", mode_is(api, "THROTTLED"))
    before = transitions(api)

    # Keep the slot busy and 2-3 units queued (between THROTTLED's down threshold, 1 per
    # slot, and CRITICAL's up threshold, 16) for 1.5 s of ticks: a dozen ticks, five holds.
    held = api.poll("n1", node, claim=True)["claims"]
    queued = 5
    noisy_enough = ticked_for(api, 1.5)
    while not noisy_enough():
        if queued > 2:
            (c,) = held
            r = api.client.post(
                f"/v1/workunits/{c['work_unit']['id']}/complete",
                json={"claim_token": c["claim_token"], "cpu_ms": 1},
                headers=node,
            )
            assert r.status_code == 200, r.text
            held = wait_until("next claim", lambda: api.poll("n1", node, claim=True)["claims"])
            queued -= 1
        else:
            api.submit(tenant)
            queued += 1
    assert transitions(api) == before, [e["payload"] for e in api.events(MODE_CHANGED)]
    assert capacity(api)["mode"] == "THROTTLED"


def test_manual_override_holds_until_deleted_or_expired(make_api: Callable[..., Api]) -> None:
    api = make_api(autoscaler=FAST)
    admin = api.admin()
    r = api.client.put(
        "/v1/capacity/mode", json={"mode": "CRITICAL", "reason": "ops"}, headers=admin
    )
    assert r.status_code == 200, r.text
    # idle: without the override the autoscaler would step down after 0.3 s of ticks
    tick_through(api, 0.8)
    assert capacity(api)["mode"] == "CRITICAL"
    assert capacity(api)["last_decision"]["override_active"] is True
    assert transitions(api) == [("OPEN", "CRITICAL", "manual")]

    again = api.client.put(
        "/v1/capacity/mode", json={"mode": "CRITICAL", "reason": "again"}, headers=admin
    )
    assert again.status_code == 200
    assert len(api.events(MODE_CHANGED)) == 1  # the mode in force: no mode change...
    pins = api.events("capacity.override.set")  # ...but the override is recorded again
    assert [e["payload"]["reason"] for e in pins] == ["ops", "again"]

    assert api.client.delete("/v1/capacity/mode", headers=admin).status_code == 204
    wait_until("OPEN", mode_is(api, "OPEN"), timeout=5)
    assert transitions(api) == [
        ("OPEN", "CRITICAL", "manual"),
        ("CRITICAL", "THROTTLED", "autoscaler"),
        ("THROTTLED", "OPEN", "autoscaler"),
    ]

    # a TTL ends the override by itself; the autoscaler decides again afterwards
    r = api.client.put(
        "/v1/capacity/mode",
        json={"mode": "THROTTLED", "reason": "maintenance", "ttl_s": 0.6},
        headers=admin,
    )
    assert r.status_code == 200
    wait_until("OPEN after the ttl", mode_is(api, "OPEN"), timeout=5)
    overrides = [
        e for e in api.events() if e["type"] in (MODE_CHANGED, "capacity.override.cleared")
    ]
    log = [(e["type"], e["payload"].get("reason")) for e in overrides]
    # held to the end of its ttl (nothing between), then the autoscaler decided again
    assert log[-3:] == [
        (MODE_CHANGED, "maintenance"),
        ("capacity.override.cleared", "override ttl expired"),
        (MODE_CHANGED, log[-1][1]),
    ]
    assert transitions(api)[-1] == ("THROTTLED", "OPEN", "autoscaler")
    set_event, cleared = overrides[-3], overrides[-2]
    held_for = _instant(cleared["recorded_at"]) - _instant(set_event["recorded_at"])
    assert held_for >= timedelta(seconds=set_event["payload"]["ttl_s"]), held_for


def test_one_leader_among_replicas_and_handover_on_stop(make_api: Callable[..., Api]) -> None:
    a, b = make_api(autoscaler=FAST), make_api(autoscaler=FAST)
    first = wait_until("a leader", lambda: lease_holder(a))
    assert first in (service(a).holder, service(b).holder)
    lead, other = (a, b) if first == service(a).holder else (b, a)

    _, tenant = lead.tenant()
    lead.node("n1", max_concurrency=1)
    for _ in range(6):
        other.submit(tenant)  # traffic on both replicas; decisions on one
    wait_until("THROTTLED", mode_is(other, "THROTTLED"))
    tick_through(other, 0.3)  # several more ticks on both replicas
    events = other.events(MODE_CHANGED)
    assert len(events) == 1, events  # decided once, not once per replica
    assert events[0]["payload"]["inputs"]["replica"] == first
    assert service(lead).is_leader and not service(other).is_leader
    assert capacity(other)["last_decision"]["replica"] == first

    lead.client.__exit__(None, None, None)  # a clean stop releases the lease
    successor = service(other).holder
    wait_until("the other replica to lead", lambda: lease_holder(other) == successor, timeout=5)
    wait_until("its decisions", lambda: capacity(other)["last_decision"]["replica"] == successor)
    assert service(other).is_leader


def test_a_dead_leader_hands_over_when_its_lease_expires(
    make_api: Callable[..., Api], db: Database, db_url: str
) -> None:
    params = params_from_settings(make_settings(db_url, autoscaler=FAST).autoscaler)
    ghost = run_tick(db, params, "ghost-replica", lease_ttl_s=1.0)  # then never ticks again
    assert ghost.leader
    with read_connection(db) as conn:
        held = leader.holder_of(conn, LEASE_NAME)
    assert held is not None and held[0] == "ghost-replica"
    ghost_until_us = held[1]
    outcomes = [run_tick(db, params, "another-replica", lease_ttl_s=1.0)]
    api = make_api(autoscaler=FAST)
    mine = service(api).holder

    def took_over() -> bool:
        outcome = service(api).tick()  # a tick of its own, beside the loop's
        assert outcome is not None
        outcomes.append(outcome)
        return outcome.leader

    wait_until("takeover", took_over, timeout=5)
    assert lease_holder(api) == mine
    # each tick judged the ghost's lease by the database's clock: refused while it was live,
    # leading once it had run out, never before
    assert [o.leader for o in outcomes] == [o.now_us >= ghost_until_us for o in outcomes]
    wait_until("its decisions", lambda: capacity(api)["last_decision"]["replica"] == mine)


# --------------------------------------------------------------------------- webhook


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first request, 200 after; records every request."""

    requests: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received = self.server.received  # type: ignore[attr-defined]
        received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if len(received) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_signs_the_scale_request_and_retries_after_a_500(
    make_api: Callable[..., Api], receiver: http.server.ThreadingHTTPServer
) -> None:
    secret = "webhook-secret-for-tests-0123"
    url = f"http://127.0.0.1:{receiver.server_address[1]}/scale"
    api = make_api(
        autoscaler={
            **FAST,
            "actuator": "webhook",
            "webhook": {"url": url, "secret": secret, "backoff_s": 0.05},
        }
    )
    _, tenant = api.tenant()
    api.node("n1", max_concurrency=1)
    for _ in range(3):
        api.submit(tenant)
    received: list[tuple[dict[str, str], bytes]] = receiver.received  # type: ignore[attr-defined]
    wait_until("a delivery after the 500", lambda: len(received) >= 2)

    [event] = api.events(SCALE_REQUESTED)[:1]
    first, second = received[0], received[1]
    assert first[1] == second[1]  # the retry sends the same bytes
    for headers, body in (first, second):
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-krako-signature"] == f"sha256={expected}"
        assert headers["x-krako-event-id"] == event["event_id"]
        assert headers["content-type"] == "application/json"
    sent = json.loads(first[1])
    assert sent["event_id"] == event["event_id"] and sent["seq"] == event["seq"]
    assert (sent["from"], sent["to"]) == (event["payload"]["from"], event["payload"]["to"])
    assert sent["reason"] == event["payload"]["reason"]
    assert sent["inputs"]["queued"] == event["payload"]["inputs"]["queued"]
    actuator = service(api).actuator
    assert isinstance(actuator, WebhookActuator)
    assert actuator.flush(5) and actuator.delivered[0] == event["event_id"]
    assert actuator.failed_attempts == 1


def test_actuator_settings_are_checked_at_start(db: Database, db_url: str) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_URL"):
        build_actuator(make_settings(db_url, autoscaler={"actuator": "webhook"}), db)
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        build_actuator(
            make_settings(
                db_url, autoscaler={"actuator": "webhook", "webhook": {"url": "http://x/"}}
            ),
            db,
        )
    with pytest.raises(ValueError, match="K8S_API_URL"):
        build_actuator(
            make_settings(
                db_url,
                autoscaler={"actuator": "kubernetes", "kubernetes": {"namespace": "krako"}},
            ),
            db,
        )
    with pytest.raises(ValueError, match="'nomad': expected one of log, local, webhook, kube"):
        build_actuator(make_settings(db_url, autoscaler={"actuator": "nomad"}), db)
    with pytest.raises(ValueError, match="hysteresis"):
        params_from_settings(
            make_settings(
                db_url,
                autoscaler={
                    "throttle_up_backlog_per_slot": 1.0,
                    "throttle_down_backlog_per_slot": 2.0,
                },
            ).autoscaler
        )


def test_each_registered_actuator_is_built_from_its_settings(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    assert list(ACTUATORS) == ["log", "local", "webhook", "kubernetes"]
    groups: dict[str, dict[str, Any]] = {
        "log": {},
        "local": {"local": {"control_plane_url": "http://cp:1", "agent_args": "--kinds cpu"}},
        "webhook": {"webhook": {"url": "http://hook/", "secret": "s" * 16, "retries": 2}},
        "kubernetes": {
            "kubernetes": {"namespace": "krako", "api_url": "https://k8s:6443"},
            "webhook": {"retries": 3},
        },
    }
    built: dict[str, Actuator] = {}
    for name, group in groups.items():
        settings = make_settings(
            db_url,
            database={"data_dir": tmp_path},
            autoscaler={"actuator": f" {name.upper()} ", "max_nodes": 3, **group},
        )
        actuator = build_actuator(settings, db)
        built[name] = actuator
        assert actuator.name == name
        actuator.close()
    local = built["local"]
    assert isinstance(local, LocalActuator)
    assert local.state_dir == (tmp_path / "autoscaler-agents").resolve()
    assert local.control_plane_url == "http://cp:1" and local.max_nodes == 3
    assert local.command("local-1")[-2:] == ["--kinds", "cpu"]
    webhook = built["webhook"]
    assert isinstance(webhook, WebhookActuator)
    assert (webhook.url, webhook.retries) == ("http://hook/", 2)
    kube = built["kubernetes"]
    assert isinstance(kube, KubernetesActuator)
    assert kube.url == (
        "https://k8s:6443/apis/apps/v1/namespaces/krako/deployments/krako-agent/scale"
    )
    assert kube.retries == 3  # the webhook group's retries serve it too


def test_the_lease_is_exclusive_until_it_expires(db: Database) -> None:
    def take(holder: str, ttl_s: float = 5.0) -> bool:
        with write_transaction(db) as uow:
            return leader.acquire(uow, "test-lease", holder, ttl_s)

    assert take("a") and not take("b")
    assert take("a", 0.2)  # renewed (for a short while)
    wait_until("a's renewal to run out: b takes the lease", lambda: take("b"))
    assert not take("a")  # b's now: a is refused
    assert not leader.release(db, "test-lease", "a")  # not a's to give
    assert leader.release(db, "test-lease", "b")
    assert take("a", 10.0)
    with read_connection(db) as conn:
        assert leader.holder_of(conn, "test-lease") is not None


def _action(event_id: str, to: int) -> ScaleAction:
    return ScaleAction(event_id, 7, 1, to, "test", {"queued": 9}, 1_790_000_000_000_000)


def test_kubernetes_actuator_patches_the_scale_subresource(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("sa-token-1\n")
    seen: list[httpx.Request] = []
    answers = [503, 200, 403]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers[len(seen) - 1], json={})

    k8s = KubernetesActuator(
        deployment="krako-agent",
        namespace="krako",
        api_url="https://k8s.example:6443/",
        token_path=token,
        ca_path=None,
        backoff_s=0.01,
        transport=httpx.MockTransport(handler),
    )
    try:
        k8s.actuate(3, _action("evt_a", 3))
        assert k8s.flush(5) and k8s.delivered == ["evt_a"]
        first, retry = seen
        assert first.method == "PATCH"
        assert str(first.url) == (
            "https://k8s.example:6443/apis/apps/v1/namespaces/krako/deployments/krako-agent/scale"
        )
        assert first.headers["content-type"] == "application/merge-patch+json"
        assert first.headers["authorization"] == "Bearer sa-token-1"
        assert json.loads(retry.content) == {"spec": {"replicas": 3}}

        token.write_text("sa-token-2")  # rotated: read again at every call
        k8s.actuate(3, None)  # no new request: nothing sent
        k8s.actuate(1, _action("evt_b", 1))
        assert k8s.flush(5)
        assert len(seen) == 3 and seen[2].headers["authorization"] == "Bearer sa-token-2"
        assert k8s.delivered == ["evt_a"]  # a 403 is not retried (RBAC missing)
    finally:
        k8s.close()


def test_webhook_keeps_a_failed_request_until_the_next_one(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        event_id = json.loads(request.content)["event_id"]
        calls.append(event_id)
        return httpx.Response(500 if event_id == "evt_1" else 204)

    hook = WebhookActuator(
        "http://receiver.example/scale",
        "s3cret",
        retries=2,
        backoff_s=0.01,
        redeliver_after_s=1.0,
        transport=httpx.MockTransport(handler),
    )
    try:
        hook.actuate(2, _action("evt_1", 2))
        assert hook.flush(5) and hook.delivered == [] and calls == ["evt_1"] * 3
        hook.actuate(2, None)  # too soon to send it again
        assert hook.flush(5) and len(calls) == 3

        def sent_again() -> bool:  # once redeliver_after_s has passed (and it fails again)
            hook.actuate(2, None)
            return hook.flush(5) and len(calls) > 3

        wait_until("a redelivery", sent_again)
        assert len(calls) == 6
        hook.actuate(4, _action("evt_2", 4))  # the next scale request supersedes it
        assert hook.flush(5) and hook.delivered == ["evt_2"]
    finally:
        hook.close()


def test_local_actuator_adopts_agents_a_previous_run_left(db: Database, tmp_path: Path) -> None:
    """A control plane killed without its shutdown leaves agents running: the next one finds
    them by their pid files (checking the command line against pid reuse) and manages them."""
    state = tmp_path / "agents"
    (state / "local-7").mkdir(parents=True)
    (state / "local-8").mkdir(parents=True)
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "node_agent", "local-7"]
    )
    try:
        (state / "local-7" / "agent.pid").write_text(str(orphan.pid))
        (state / "local-8" / "agent.pid").write_text(str(os.getpid()))  # not an agent
        local = LocalActuator(
            db, control_plane_url="http://x", join_token="j" * 20, state_dir=state
        )
        assert set(local.agents) == {"local-7"}
        assert not (state / "local-8" / "agent.pid").exists()
        assert local._next_node_id() == "local-8"
        local.close()  # SIGTERM, as for its own agents
        assert orphan.wait(timeout=5) == -signal.SIGTERM
        assert not (state / "local-7" / "agent.pid").exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
