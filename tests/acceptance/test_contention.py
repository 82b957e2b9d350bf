"""Multi-agent contention against a real uvicorn process (DESIGN.md invariant 4): many nodes
racing for the same unit get exactly one winner, recorded by exactly one event."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, JOIN, StartControlPlane, auth
from tests.support.events import read_events

pytestmark = pytest.mark.slow

NODES = 5
CLAIMS_PER_ROUND = 20
ROUNDS = 10


def test_concurrent_claims_have_exactly_one_winner(
    control_plane: StartControlPlane,
) -> None:
    cp = control_plane(KRAKO_SCHEDULER_OFFER_FANOUT=str(NODES))
    with cp.client() as c:
        r = c.post("/v1/tenants", json={"name": "race"}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        tenant = auth(r.json()["api_key"])
        node_headers: dict[str, dict[str, str]] = {}
        for i in range(NODES):
            node_id = f"racer-{i}"
            r = c.post(
                "/v1/nodes",
                json={"node_id": node_id, "supported_kinds": ["cpu"], "max_concurrency": 50},
                headers=auth(JOIN),
            )
            assert r.status_code == 201, r.text
            node_headers[node_id] = auth(r.json()["node_token"])

        # one client (connection pool) per racer thread, reused across rounds
        clients = [cp.client() for _ in range(CLAIMS_PER_ROUND)]
        try:
            for round_no in range(ROUNDS):
                r = c.post(
                    "/v1/workunits",
                    json={
                        "kind": "cpu",
                        "execution_session_id": f"round-{round_no}",
                        "payload": {"handler": "noop"},
                    },
                    headers=tenant,
                )
                assert r.status_code == 201, r.text
                unit_id = r.json()["id"]
                replies = _race(clients, unit_id, node_headers)
                _judge(c, unit_id, replies)
                # finish the unit so the next round starts from a quiet fleet
                [(node_id, winner)] = {(n, b["claim_token"]) for n, s, b in replies if s == 200}
                r = c.post(
                    f"/v1/workunits/{unit_id}/complete",
                    json={"claim_token": winner, "cpu_ms": 1},
                    headers=node_headers[node_id],
                )
                assert r.status_code == 200, r.text
        finally:
            for client in clients:
                client.close()

        # the whole log: one claimed and one completed event per unit, no event twice
        events = read_events(c, auth(ADMIN))
        assert len({e["event_id"] for e in events}) == len(events)
        claimed = [e["stream_id"] for e in events if e["type"] == "workunit.claimed"]
        completed = [e["stream_id"] for e in events if e["type"] == "workunit.completed"]
        assert len(claimed) == len(set(claimed)) == ROUNDS
        assert sorted(completed) == sorted(claimed)


def _race(
    clients: list[httpx.Client], unit_id: str, node_headers: dict[str, dict[str, str]]
) -> list[tuple[str, int, dict[str, Any]]]:
    """Fire CLAIMS_PER_ROUND claims at once, round-robin over the nodes."""
    nodes = sorted(node_headers)
    barrier = threading.Barrier(len(clients))
    replies: list[tuple[str, int, dict[str, Any]]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        node_id = nodes[i % len(nodes)]
        try:
            barrier.wait(timeout=10)
            r = clients[i].post(
                f"/v1/workunits/{unit_id}/claim",
                json={"attempt": 1},
                headers=node_headers[node_id],
            )
            with lock:
                replies.append((node_id, r.status_code, r.json()))
        except BaseException as exc:  # reported below, with the thread's context
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(replies) == len(clients)
    return replies


def _judge(c: httpx.Client, unit_id: str, replies: list[tuple[str, int, dict[str, Any]]]) -> None:
    granted = [(n, b) for n, s, b in replies if s == 200]
    refused = [(n, s, b) for n, s, b in replies if s != 200]
    detail = json.dumps(sorted((n, s, b.get("code")) for n, s, b in replies))
    # exactly one claim is granted. The winner's own concurrent requests may be answered
    # with that same claim again (a retried claim is idempotent), never with another.
    assert granted, f"nobody won {unit_id}: {detail}"
    assert len({(n, b["claim_token"]) for n, b in granted}) == 1, detail
    winner = granted[0][0]
    assert all(n == winner for n, _ in granted), detail
    # every other node was offered the unit and lost the race
    for node_id, status, body in refused:
        assert node_id != winner or status == 409, detail
        assert status == 409, detail
        assert body["code"] == "already_claimed", detail
    assert {n for n, _, _ in refused} == {n for n, _, _ in replies} - {winner}
    r = c.get(f"/v1/workunits/{unit_id}/events", headers=auth(ADMIN))
    kinds = [e["type"] for e in r.json()["events"]]
    assert kinds.count("workunit.claimed") == 1, kinds
    [scheduled] = [e for e in r.json()["events"] if e["type"] == "workunit.scheduled"]
    assert len(scheduled["payload"]["offered_to"]) == NODES
    r = c.get(f"/v1/workunits/{unit_id}", headers=auth(ADMIN))
    assert r.json()["status"] == "claimed" and r.json()["node_id"] == winner


def test_http_edges_over_a_real_socket(control_plane: StartControlPlane) -> None:
    """What only a real server shows: the body limit on a socket, with a Content-Length
    and chunked, and problem documents on the wire."""
    cp = control_plane(KRAKO_MAX_BODY_BYTES="4096")
    with cp.client() as c:
        r = c.post("/v1/tenants", json={"name": "edge"}, headers=auth(ADMIN))
        tenant = auth(r.json()["api_key"])
        body = json.dumps(
            {
                "kind": "cpu",
                "execution_session_id": "s",
                "payload": {"handler": "noop", "pad": "x" * 10_000},
            }
        ).encode()

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 1024):
                yield body[i : i + 1024]

        headers = {**tenant, "content-type": "application/json"}
        for content in (body, chunks()):
            r = c.post("/v1/workunits", content=content, headers=headers)
            assert r.status_code == 413, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "payload_too_large"
        r = c.get("/v1/workunits", headers={"Authorization": "Bearer nope-nope-nope"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").text.startswith("#")
        assert read_events(c, auth(ADMIN), "workunit.submitted") == []


def test_concurrent_submits_with_one_idempotency_key_make_one_unit(
    control_plane: StartControlPlane,
) -> None:
    cp = control_plane()
    with cp.client() as c:
        r = c.post("/v1/tenants", json={"name": "idem"}, headers=auth(ADMIN))
        tenant = {**auth(r.json()["api_key"]), "Idempotency-Key": "same-key"}
        body = {"kind": "cpu", "execution_session_id": "s", "payload": {"handler": "noop"}}
        clients = [cp.client() for _ in range(12)]
        barrier = threading.Barrier(len(clients))
        replies: list[tuple[int, str]] = []
        lock = threading.Lock()

        def submit(client: httpx.Client) -> None:
            barrier.wait(timeout=10)
            r = client.post("/v1/workunits", json=body, headers=tenant)
            with lock:
                replies.append((r.status_code, r.json().get("id", r.text)))

        threads = [threading.Thread(target=submit, args=(cl,)) for cl in clients]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        finally:
            for cl in clients:
                cl.close()
        statuses = sorted(s for s, _ in replies)
        assert statuses == [200] * (len(clients) - 1) + [201], replies
        assert len({unit_id for _, unit_id in replies}) == 1, replies
        assert len(read_events(c, auth(ADMIN), "workunit.submitted")) == 1
