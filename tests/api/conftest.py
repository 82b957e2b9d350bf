"""API tests: the real app on a real database per backend, through httpx (Starlette's
TestClient runs the lifespan: migrations, seeding, background loops)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.services import Services
from control_plane.settings import Settings
from tests.support.events import Event, read_events, wait_for_event

ADMIN = "admin-token-for-tests-0123456789"
JOIN = "join-token-for-tests-0123456789"


def make_settings(db_url: str, **groups: dict[str, Any]) -> Settings:
    """Test settings on ``db_url``; ``groups`` override fields by group, merged into the
    defaults here (``make_settings(url, leases={"lease_s": 0.5})`` keeps the test tokens)."""
    values: dict[str, Any] = {
        "database": {"url": db_url},
        "api": {"admin_token": ADMIN, "node_join_token": JOIN},
        "leases": {
            "lease_s": 30.0,
            "heartbeat_interval_s": 5.0,
            "heartbeat_timeout_s": 30.0,
            "reaper_interval_s": 0.2,
        },
        # the autoscaler's own tests set a short interval; elsewhere its scale requests
        # would race the "appends nothing" checks
        "autoscaler": {"interval_s": 3600.0},
    }
    return Settings(_env_file=None, **merged(values, groups))  # type: ignore[call-arg]


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top, nested dicts (groups) merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    client: TestClient

    @property
    def services(self) -> Services:
        """The app's services (its database, autoscaler, ...), for tests that look inside."""
        services: Services = self.client.app.state.services  # type: ignore[attr-defined]
        return services

    def admin(self) -> dict[str, str]:
        return auth(ADMIN)

    def tenant(self, name: str = "acme") -> tuple[str, dict[str, str]]:
        r = self.client.post("/v1/tenants", json={"name": name}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        body = r.json()
        return body["tenant_id"], auth(body["api_key"])

    def node(
        self,
        node_id: str,
        kinds: tuple[str, ...] = ("cpu", "llm_pod"),
        max_concurrency: int = 4,
        region: str | None = None,
    ) -> dict[str, str]:
        r = self.client.post(
            "/v1/nodes",
            json={
                "node_id": node_id,
                "supported_kinds": list(kinds),
                "max_concurrency": max_concurrency,
                "region": region,
            },
            headers=auth(JOIN),
        )
        assert r.status_code == 201, r.text
        return auth(r.json()["node_token"])

    def submit(self, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "cpu",
            "execution_session_id": "s1",
            "payload": {"handler": "noop"},
        }
        body.update(overrides)
        r = self.client.post("/v1/workunits", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def poll(
        self, node_id: str, headers: dict[str, str], claim: bool = True, max_units: int = 10
    ) -> dict[str, Any]:
        r = self.client.post(
            f"/v1/nodes/{node_id}/poll",
            json={"max_units": max_units, "wait_s": 0, "claim": claim},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, type_: str | None = None, stream_id: str | None = None) -> list[Event]:
        """Every event of the log (of ``type_``, about ``stream_id``), in order, as the
        admin sees them."""
        return read_events(self.client, auth(ADMIN), type_, stream_id=stream_id)

    def wait_for_event(self, type_: str, stream_id: str | None = None) -> Event:
        """The latest ``type_`` event (about ``stream_id``), once the log has one."""
        return wait_for_event(self.client, auth(ADMIN), type_, stream_id=stream_id)


@pytest.fixture
def make_api(db_url: str) -> Iterator[Callable[..., Api]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Api:
        client = TestClient(create_app(make_settings(db_url, **overrides)))
        client.__enter__()
        clients.append(client)
        return Api(client)

    yield build
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


# --------------------------------------------------------------------------- contract helpers
# (used by the contract suites: test_auth, test_bad_input, test_claims, test_pagination)

PROBLEM_FIELDS = ("type", "title", "status", "detail", "code")


def assert_problem(
    r: Any, status: int, code: str | None = None, where: Any = None
) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem of ``status`` (and ``code``); returns its body. ``where``
    says which case of a table failed."""
    context = f" [{where!r}]" if where is not None else ""
    assert r.status_code == status, f"expected {status}, got {r.status_code}{context}: {r.text}"
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = dict(r.json())
    for field in PROBLEM_FIELDS:
        assert field in body, f"problem without {field!r}: {body}"
    assert body["status"] == status, body
    assert body["code"] and body["code"].replace("_", "").isalnum(), body
    if code is not None:
        assert body["code"] == code, f"{body}{context}"
    return body


@pytest.fixture
def log_size(api: Api) -> Callable[[], int]:
    """How many events the log holds now (for 'appends nothing' checks)."""
    return lambda: len(api.events())
