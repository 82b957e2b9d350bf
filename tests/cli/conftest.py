"""The ``krako`` CLI against a real control plane: one server process per test module, on a
fresh SQLite file, driven through typer's CliRunner. Nodes are played by the test itself over
HTTP (register, long-poll with claim, report), so a unit's fate is decided by the test."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from krako_cli.main import app
from tests.support.processes import ControlPlaneProcess
from tests.support.waiting import wait_until

ADMIN = "cli-admin-token-0123456789abcdef"
JOIN = "cli-join-token-0123456789abcdef"


@dataclass(frozen=True)
class Server:
    url: str
    admin: str = ADMIN
    join: str = JOIN

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=40.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m control_plane.server`` on a free port and a fresh SQLite database."""
    workdir = tmp_path_factory.mktemp("cp")
    with ControlPlaneProcess(
        workdir=workdir,
        admin_token=ADMIN,
        join_token=JOIN,
        database_url=f"sqlite:///{workdir / 'krako.db'}",
    ).start() as cp:
        yield Server(cp.url)


@pytest.fixture(scope="module")
def tenant_key(server: Server) -> str:
    with server.http(server.admin) as c:
        reply = c.post("/v1/tenants", json={"name": f"cli-{uuid.uuid4().hex[:6]}"})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["api_key"])


@pytest.fixture(autouse=True)
def _no_ambient_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KRAKO_URL", raising=False)
    monkeypatch.delenv("KRAKO_TOKEN", raising=False)


Invoke = Callable[..., Result]


@pytest.fixture
def krako(server: Server) -> Invoke:
    """Run ``krako --url <server> [--token T] ARGS...`` in-process; returns typer's Result."""
    runner = CliRunner()

    def invoke(*args: str, token: str | None = None, url: str | None = None) -> Result:
        argv = ["--url", url or server.url]
        if token is not None:
            argv += ["--token", token]
        return runner.invoke(app, [*argv, *args], catch_exceptions=False)

    return invoke


@dataclass
class FakeNode:
    """A node played by the test: it registers, long-polls with claim, and reports."""

    server: Server
    region: str
    node_id: str = field(default_factory=lambda: f"n-{uuid.uuid4().hex[:8]}")
    kinds: tuple[str, ...] = ("cpu",)
    max_concurrency: int = 4
    token: str = ""

    def register(self) -> FakeNode:
        with self.server.http(self.server.join) as c:
            reply = c.post(
                "/v1/nodes",
                json={
                    "node_id": self.node_id,
                    "supported_kinds": list(self.kinds),
                    "region": self.region,
                    "max_concurrency": self.max_concurrency,
                },
            )
        assert reply.status_code == 201, reply.text
        self.token = reply.json()["node_token"]
        return self

    def take(self, wait_s: float = 10.0) -> dict[str, Any]:
        """Claim the next unit of this node's region offered to it (a ClaimReply).

        Units bound to no region may be offered to any node; one of those is a stray from
        another test: it is completed and skipped."""
        with self.server.http(self.token) as c:

            def claimed() -> dict[str, Any] | None:
                reply = c.post(
                    f"/v1/nodes/{self.node_id}/poll",
                    json={"max_units": 1, "wait_s": 2, "claim": True},
                )
                assert reply.status_code == 200, reply.text
                for claim in reply.json()["claims"]:
                    if claim["work_unit"]["region"] == self.region:
                        return dict(claim)
                    self.complete(claim, result="stray")
                return None

            what = f"a unit of {self.region} for {self.node_id}"
            return wait_until(what, claimed, wait_s, interval=0)  # each poll is held 2 s

    def complete(self, claim: dict[str, Any], result: Any = None) -> None:
        unit_id = claim["work_unit"]["id"]
        with self.server.http(self.token) as c:
            reply = c.post(
                f"/v1/workunits/{unit_id}/complete",
                json={"claim_token": claim["claim_token"], "result": result, "cpu_ms": 7},
            )
        assert reply.status_code == 200, reply.text

    def fail(self, claim: dict[str, Any], error: str) -> None:
        unit_id = claim["work_unit"]["id"]
        with self.server.http(self.token) as c:
            reply = c.post(
                f"/v1/workunits/{unit_id}/fail",
                json={"claim_token": claim["claim_token"], "error": error, "retryable": False},
            )
        assert reply.status_code == 200, reply.text

    def drain(self) -> None:
        with self.server.http(self.server.admin) as c:
            c.post(f"/v1/nodes/{self.node_id}/drain")

    def in_background(self, action: Callable[[FakeNode], None]) -> threading.Thread:
        thread = threading.Thread(target=action, args=(self,), daemon=True)
        thread.start()
        return thread


@pytest.fixture
def make_node(server: Server) -> Iterator[Callable[..., FakeNode]]:
    """Register nodes in a region of the test's own; they are drained afterwards so that no
    later test's unit is offered to a node nobody plays any more."""
    made: list[FakeNode] = []

    def make(region: str, **kw: Any) -> FakeNode:
        node = FakeNode(server, region, **kw).register()
        made.append(node)
        return node

    yield make
    for node in made:
        node.drain()


@pytest.fixture
def region() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"
