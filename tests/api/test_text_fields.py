"""NUL characters are refused the same way on every backend (PostgreSQL cannot store them)."""

from __future__ import annotations

from tests.api.conftest import JOIN, Api, auth


def test_nul_in_names_is_422_on_every_backend(api: Api) -> None:
    before = len(api.events())
    r = api.client.post("/v1/tenants", json={"name": "a\u0000b"}, headers=api.admin())
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    r = api.client.post(
        "/v1/nodes",
        json={"supported_kinds": ["cpu"], "max_concurrency": 1, "region": "eu\u0000"},
        headers=auth(JOIN),
    )
    assert r.status_code == 422
    r = api.client.post(
        "/v1/nodes",
        json={"supported_kinds": ["cpu"], "max_concurrency": 1, "labels": {"k": "v\u0000"}},
        headers=auth(JOIN),
    )
    assert r.status_code == 422
    assert len(api.events()) == before
