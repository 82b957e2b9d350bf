"""Lists are paginated by ``limit`` and an opaque ``cursor``: walking a list visits every
item exactly once and ends with ``next_cursor: null`` (API.md conventions)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import ADMIN, Api, auth


def _walk(api: Api, path: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        r = api.client.get(path, params=query, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= params.get("limit", 100)
        items.extend(page["items"])
        pages += 1
        assert pages < 1000
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert page["items"], "a page with a next cursor has items"


def _batch(api: Api, headers: dict[str, str], n: int, session: str) -> list[str]:
    units = [
        {"kind": "cpu", "execution_session_id": session, "payload": {"handler": "noop"}}
        for _ in range(n)
    ]
    r = api.client.post("/v1/workunits/batch", json={"units": units}, headers=headers)
    assert r.status_code == 200, r.text
    return [x["work_unit"]["id"] for x in r.json()["results"]]


def test_work_unit_pages_walk_everything_exactly_once(api: Api) -> None:
    _, a = api.tenant("a")
    _, b = api.tenant("b")
    mine = _batch(api, a, 23, "s1") + _batch(api, a, 4, "s2")
    theirs = _batch(api, b, 5, "s1")
    node = api.node("node-a", max_concurrency=2)
    api.poll("node-a", node)  # two of them claimed: the status filter has something to split

    for limit in (1, 7, 27, 100, 1000):
        seen = [u["id"] for u in _walk(api, "/v1/workunits", a, limit=limit)]
        assert len(seen) == len(set(seen)), f"duplicates with limit={limit}"
        assert set(seen) == set(mine), f"limit={limit}"
    # the default page size is 100; a full last page still ends with a null cursor
    r = api.client.get("/v1/workunits", headers=a)
    assert len(r.json()["items"]) == 27 and r.json()["next_cursor"] is None
    r = api.client.get("/v1/workunits", params={"limit": 27}, headers=a)
    assert len(r.json()["items"]) == 27 and r.json()["next_cursor"] is None

    # filters combine with pagination
    s2 = _walk(api, "/v1/workunits", a, limit=3, execution_session_id="s2")
    assert sorted(u["id"] for u in s2) == sorted(mine[23:])
    by_status: dict[str, set[str]] = {}
    for status in ("queued", "scheduled", "claimed"):
        got = _walk(api, "/v1/workunits", auth(ADMIN), limit=4, status=status)
        assert all(u["status"] == status for u in got)
        by_status[status] = {u["id"] for u in got}
    assert len(by_status["claimed"]) == 2
    assert set().union(*by_status.values()) == set(mine) | set(theirs)
    # kind and priority filter too
    llm = api.client.post(
        "/v1/workunits",
        json={"kind": "llm_pod", "execution_session_id": "s3", "priority": "p0",
              "payload": {"prompt": "hi"}},
        headers=a,
    ).json()  # fmt: skip
    got = _walk(api, "/v1/workunits", a, limit=2, kind="llm_pod")
    assert [u["id"] for u in got] == [llm["id"]]
    got = _walk(api, "/v1/workunits", a, limit=2, priority="p0")
    assert [u["id"] for u in got] == [llm["id"]]
    got = _walk(api, "/v1/workunits", a, limit=5, kind="cpu", priority="p1")
    assert sorted(u["id"] for u in got) == sorted(mine)
    mine.append(llm["id"])
    # the admin walks every tenant's units
    everything = [u["id"] for u in _walk(api, "/v1/workunits", auth(ADMIN), limit=6)]
    assert len(everything) == len(set(everything))
    assert set(everything) == set(mine) | set(theirs)


def test_pages_are_stable_while_units_are_added(api: Api) -> None:
    _, a = api.tenant()
    first = _batch(api, a, 10, "s")
    r = api.client.get("/v1/workunits", params={"limit": 4}, headers=a)
    page1 = [u["id"] for u in r.json()["items"]]
    cursor = r.json()["next_cursor"]
    later = _batch(api, a, 5, "s")
    rest: list[str] = []
    while cursor:
        r = api.client.get("/v1/workunits", params={"limit": 4, "cursor": cursor}, headers=a)
        rest += [u["id"] for u in r.json()["items"]]
        cursor = r.json()["next_cursor"]
    walked = page1 + rest
    assert len(walked) == len(set(walked))
    assert set(first) <= set(walked)  # nothing that existed at the start is skipped
    assert set(walked) <= set(first) | set(later)


def test_node_pages(api: Api) -> None:
    ids = [f"node-{i:02d}" for i in range(11)]
    for node_id in ids:
        api.node(node_id)
    for limit in (1, 4, 11, 1000):
        seen = [n["node_id"] for n in _walk(api, "/v1/nodes", auth(ADMIN), limit=limit)]
        assert seen == sorted(ids), f"limit={limit}"
    r = api.client.get("/v1/nodes/node-03", headers=auth(ADMIN))
    node = r.json()
    for key in (
        "node_id",
        "region",
        "supported_kinds",
        "max_concurrency",
        "running",
        "health",
        "trust",
        "drained",
        "last_heartbeat_at",
    ):
        assert key in node, key


def test_event_pages_by_after_and_last_seq(api: Api) -> None:
    _, a = api.tenant()
    _batch(api, a, 12, "s")
    everything = api.events()
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    ids = [e["event_id"] for e in everything]
    assert len(ids) == len(set(ids))
    walked: list[int] = []
    after = 0
    while True:
        r = api.client.get("/v1/events", params={"after": after, "limit": 5}, headers=auth(ADMIN))
        page = r.json()
        assert len(page["events"]) <= 5
        if not page["events"]:
            assert page["last_seq"] == after
            break
        walked += [e["seq"] for e in page["events"]]
        assert page["last_seq"] == page["events"][-1]["seq"]
        after = page["last_seq"]
    assert walked == seqs
    # the type filter pages the same way
    r = api.client.get(
        "/v1/events", params={"type": "workunit.submitted", "limit": 1000}, headers=a
    )
    assert len(r.json()["events"]) == 12
    for e in r.json()["events"]:
        for key in (
            "seq",
            "event_id",
            "type",
            "tenant_id",
            "stream_id",
            "payload",
            "recorded_at",
            "causation_id",
            "correlation_id",
        ):
            assert key in e, key
