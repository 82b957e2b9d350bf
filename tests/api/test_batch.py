"""Batch submit: each item stands alone."""

from __future__ import annotations

from tests.api.conftest import Api


def test_a_non_object_item_fails_alone(api: Api) -> None:
    _, th = api.tenant()
    good = {"kind": "cpu", "execution_session_id": "s", "payload": {"handler": "noop"}}
    r = api.client.post(
        "/v1/workunits/batch", json={"units": [good, 42, "x", good, None]}, headers=th
    )
    assert r.status_code == 200, r.text
    statuses = [x["status"] for x in r.json()["results"]]
    assert statuses == [201, 422, 422, 201, 422]
    assert r.json()["results"][1]["error"]["code"] == "invalid_input"
    assert len(api.events("workunit.submitted")) == 2


def test_same_key_twice_in_one_batch_is_one_unit(api: Api) -> None:
    _, th = api.tenant()
    item = {
        "kind": "cpu",
        "execution_session_id": "s",
        "payload": {"handler": "noop"},
        "idempotency_key": "k1",
    }
    other = {**item, "payload": {"handler": "sleep", "args": {"ms": 1}}}
    r = api.client.post("/v1/workunits/batch", json={"units": [item, item, other]}, headers=th)
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 200, 409]
    assert results[0]["work_unit"]["id"] == results[1]["work_unit"]["id"]
    assert results[2]["error"]["code"] == "idempotency_conflict"
    assert len(api.events("workunit.submitted")) == 1
