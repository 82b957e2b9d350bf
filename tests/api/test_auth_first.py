"""Who you are comes before what you sent: no token is 401 even with a malformed body."""

from __future__ import annotations

from tests.api.conftest import Api


def test_malformed_body_without_a_token_is_401(api: Api) -> None:
    before = len(api.events())
    for path in ("/v1/workunits", "/v1/tenants", "/v1/nodes", "/v1/workunits/batch"):
        r = api.client.post(
            path, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 401, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = api.client.post("/v1/workunits", content=b"{}", headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 401
    assert len(api.events()) == before


def test_operations_routes_need_no_token(api: Api) -> None:
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").status_code == 200
    assert api.client.get("/openapi.json").status_code == 200
