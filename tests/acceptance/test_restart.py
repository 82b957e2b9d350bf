"""Nothing acknowledged is lost (DESIGN.md invariant 5): SIGKILL the control plane in the
middle of a burst of submits, restart it on the same database, and every unit that got a 2xx
is there, with exactly one ``workunit.submitted`` event each and no event stored twice."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import ADMIN, StartControlPlane, auth
from tests.support.events import read_events
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

SUBMITTERS = 4
KILL_AFTER_ACKS = 40


def _unit_body(key: str) -> dict[str, Any]:
    return {"kind": "cpu", "execution_session_id": "burst", "payload": {"handler": key}}


def test_sigkill_during_a_burst_loses_nothing_acknowledged(
    control_plane: StartControlPlane,
) -> None:
    cp = control_plane()
    with cp.client() as c:
        r = c.post("/v1/tenants", json={"name": "burst"}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        tenant = auth(r.json()["api_key"])

    acked: dict[str, str] = {}  # idempotency key -> unit id, for every 2xx
    unknown: set[str] = set()  # sent, but no answer (the process died under it)
    failures: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(n: int) -> None:
        try:
            submit_until_stopped(n)
        except BaseException as exc:  # reported by the main thread
            with lock:
                failures.append(exc)

    def submit_until_stopped(n: int) -> None:
        with cp.client(timeout=httpx.Timeout(10.0)) as client:
            i = 0
            while not stop.is_set():
                key = f"k-{n}-{i}"
                i += 1
                try:
                    r = client.post(
                        "/v1/workunits",
                        json=_unit_body(key),
                        headers={**tenant, "Idempotency-Key": key},
                    )
                except httpx.TransportError:
                    with lock:
                        unknown.add(key)
                    return
                assert r.status_code in (200, 201), r.text
                with lock:
                    acked[key] = r.json()["id"]

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(SUBMITTERS)]
    for t in threads:
        t.start()

    def enough_acks() -> bool:
        assert not failures, failures
        with lock:
            return len(acked) >= KILL_AFTER_ACKS

    wait_until(
        f"{KILL_AFTER_ACKS} acknowledged submits",
        enough_acks,
        interval=0.01,
        context=lambda: f"{len(acked)} acknowledged\n{cp.logs()}",
    )
    cp.kill()  # mid-burst: requests are in flight
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures
    assert acked

    cp.start()  # same database, fresh process
    with cp.client() as c:
        # every acknowledged unit survived, as acknowledged
        for key, unit_id in acked.items():
            r = c.get(f"/v1/workunits/{unit_id}", headers=tenant)
            assert r.status_code == 200, (key, r.text)
            assert r.json()["payload"]["handler"] == key
        # a key whose answer was lost is safe to send again: the unit exists once
        for key in sorted(unknown):
            r = c.post(
                "/v1/workunits", json=_unit_body(key), headers={**tenant, "Idempotency-Key": key}
            )
            assert r.status_code in (200, 201), r.text
            acked[key] = r.json()["id"]
        # and repeating an acknowledged one is a replay, not a second unit
        some_key, some_id = next(iter(acked.items()))
        r = c.post(
            "/v1/workunits",
            json=_unit_body(some_key),
            headers={**tenant, "Idempotency-Key": some_key},
        )
        assert r.status_code == 200 and r.json()["id"] == some_id

        events = read_events(c, auth(ADMIN))
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids)), "an event was stored twice"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        submitted = [e["stream_id"] for e in events if e["type"] == "workunit.submitted"]
        assert len(submitted) == len(set(submitted)), "a unit was submitted twice"
        units: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = c.get("/v1/workunits", params=params, headers=tenant)
            units += r.json()["items"]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert sorted(u["id"] for u in units) == sorted(submitted)
        assert set(acked.values()) <= set(submitted)
        # one unit per key: nothing was created behind a key's back
        handlers = [u["payload"]["handler"] for u in units]
        assert len(handlers) == len(set(handlers))
        assert set(acked) <= set(handlers)
