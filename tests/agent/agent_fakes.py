"""A scripted control plane for agent tests, served through ``httpx.MockTransport``.

It implements the node routes of API.md with just enough state to judge an agent: join
token, node tokens, a queue of units, claims with tokens, long-polls that really wait (and
count whether each was answered or dropped by the agent while held), idempotent reports,
409 ``stale_claim`` for revoked claims. Faults are scripted per route:
``fake.script("poll", 503, httpx.ConnectError("down"), ...)`` makes the next requests to that
route fail in that order (an int is a status, an exception is raised by the transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

JOIN_TOKEN = "join-secret"
LOSE_REPLY = "lose-reply"  # script() marker: act on the request, then drop the connection
_PASS = "pass"


def problem(status: int, code: str, detail: str = "") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "type": "about:blank",
            "title": code,
            "status": status,
            "detail": detail or code,
            "code": code,
        },
        headers={"Content-Type": "application/problem+json"},
    )


def unit_json(unit_id: str, kind: str, payload: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": unit_id,
        "tenant_id": "ten_1",
        "kind": kind,
        "execution_session_id": "s1",
        "priority": "p1",
        "region": None,
        "payload": payload,
        "status": "scheduled",
        "attempt": attempt,
        "max_attempts": 3,
        "node_id": None,
        "result": None,
        "error": None,
        "created_at": now,
        "updated_at": now,
    }


@dataclass
class Claim:
    unit: dict[str, Any]
    token: str
    node_id: str
    attempt: int
    revoked: bool = False


@dataclass
class FakeControlPlane:
    heartbeat_interval_s: float = 0.05
    lease_s: float = 5.0
    offer_only: bool = False  # answer polls with assignments even when asked to claim
    overdeliver: int = 0  # hand out this many more units than a poll asked for (a bug)
    poll_reply_delay_s: float = 0.0  # claims are granted, then the reply takes this long
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    completions: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    invocations: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale_reports: list[tuple[str, str]] = field(default_factory=list)
    answered_polls: int = 0  # polls that got their reply
    cut_polls: int = 0  # polls the agent dropped while they were held (cancelled)

    def __post_init__(self) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.claims: dict[str, Claim] = {}
        self.offered: dict[str, dict[str, Any]] = {}
        self.node_tokens: dict[str, str] = {}
        self._faults: dict[str, deque[Any]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._work = asyncio.Event()
        self._changed = asyncio.Event()
        self.terminal: dict[str, str] = {}  # unit id -> "completed" | "failed"

    # ------------------------------------------------------------------ scripting

    def script(self, route: str, *faults: Any) -> None:
        """Make the next requests to ``route`` fail in order (status int or exception)."""
        self._faults[route].extend(faults)

    def submit(
        self,
        unit_id: str,
        kind: str = "cpu",
        payload: dict[str, Any] | None = None,
        attempt: int = 1,
    ) -> None:
        self.pending.append(unit_json(unit_id, kind, payload or {"handler": "noop"}, attempt))
        self._work.set()

    def revoke(self, unit_id: str) -> None:
        """The claim is gone (cancelled or lease lost): say so at the next heartbeat."""
        self.claims[unit_id].revoked = True

    def forget_tokens(self) -> None:
        """A control plane restart that lost node tokens: every node call is 401 now."""
        self.node_tokens.clear()

    async def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true (re-checked after every request, and every
        10 ms for predicates on the agent's own state)."""

        async def _loop() -> None:
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.01)

        await asyncio.wait_for(_loop(), timeout)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ------------------------------------------------------------------ routes

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append((request.method, path, body))
        try:
            return await self._route(request, path, body)
        finally:
            self._changed.set()

    async def _route(self, request: httpx.Request, path: str, body: Any) -> httpx.Response:
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "nodes"] and len(parts) == 2:
            route = "register"
        elif parts[:2] == ["v1", "nodes"] and len(parts) == 4:
            route = parts[3]
        elif parts[:2] == ["v1", "workunits"] and len(parts) == 4:
            route = {"llm-invocations": "llm"}.get(parts[3], parts[3])
        else:
            return problem(404, "not_found", path)
        if self._faults[route]:
            fault = self._faults[route].popleft()
            if fault == LOSE_REPLY:  # the server acts, the reply never arrives
                self._faults[route].appendleft(_PASS)
                await self._route(request, path, body)
                raise httpx.ReadError("connection dropped after the server acted")
            if fault == _PASS:
                pass
            elif isinstance(fault, BaseException):
                raise fault
            elif isinstance(fault, int):
                return problem(fault, f"scripted_{fault}")
            else:
                return fault  # type: ignore[no-any-return]

        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if route == "register":
            if token != JOIN_TOKEN:
                return problem(401, "unauthorized", "bad join token")
            return self._register(body)
        node_id = next((n for n, t in self.node_tokens.items() if t == token), None)
        if node_id is None:
            return problem(401, "unauthorized", "unknown node token")
        if route == "heartbeat":
            return self._heartbeat(node_id, body)
        if route == "poll":
            return await self._poll(node_id, body)
        if route == "reports":
            return await self._reports(request, body)
        unit_id = parts[2]
        if route == "claim":
            return self._claim_offer(node_id, unit_id, body)
        claim = self.claims.get(unit_id)
        if (
            claim is None
            or claim.revoked
            or claim.node_id != node_id
            or (body.get("claim_token") != claim.token)
        ):
            self.stale_reports.append((route, unit_id))
            return problem(409, "stale_claim", f"{unit_id}: claim is not held")
        if route == "llm":
            first = body["invocation_id"] not in self.invocations
            self.invocations.setdefault(body["invocation_id"], body)
            return httpx.Response(
                201 if first else 200, json={"invocation_id": body["invocation_id"]}
            )
        if route == "complete":
            if unit_id not in self.terminal:
                self.completions[unit_id].append(body)
                self.terminal[unit_id] = "completed"
            return httpx.Response(200, json=claim.unit)
        if route == "fail":
            if unit_id not in self.terminal:
                self.failures[unit_id].append(body)
                self.terminal[unit_id] = "failed"
            return httpx.Response(200, json=claim.unit)
        return problem(404, "not_found", path)

    async def _reports(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        """The batch route: each item is judged as its single-unit route would judge it
        (scripted faults of ``complete`` / ``fail`` included)."""
        out: dict[str, list[dict[str, Any]]] = {"completions": [], "failures": []}
        for key, route in (("completions", "complete"), ("failures", "fail")):
            for item in body.get(key, []):
                fields = dict(item)
                unit_id = fields.pop("work_unit_id")
                path = f"/v1/workunits/{unit_id}/{route}"
                self.requests.append(("POST", path, fields))
                reply = await self._route(request, path, fields)
                data = reply.json()
                if reply.status_code >= 500 or reply.status_code == 429:
                    return reply  # the whole batch answered like the single route
                if reply.status_code < 400:
                    out[key].append({"status": reply.status_code, "work_unit": data})
                else:
                    out[key].append({"status": reply.status_code, "error": data})
        return httpx.Response(200, json=out)

    def _register(self, body: dict[str, Any]) -> httpx.Response:
        self.registrations.append(body)
        node_id = body.get("node_id") or f"node-{next(self._ids)}"
        token = f"nt-{node_id}-{len(self.registrations)}"
        self.node_tokens[node_id] = token
        return httpx.Response(
            201,
            json={
                "node_id": node_id,
                "node_token": token,
                "heartbeat_interval_s": self.heartbeat_interval_s,
                "lease_s": self.lease_s,
            },
        )

    def _heartbeat(self, node_id: str, body: dict[str, Any]) -> httpx.Response:
        self.heartbeats.append(body)
        revoked = [u for u in body["running"] if u in self.claims and self.claims[u].revoked]
        renewed = [u for u in body["running"] if u not in revoked]
        return httpx.Response(
            200, json={"capacity_mode": "OPEN", "renewed": renewed, "revoked": revoked}
        )

    def _grant(self, node_id: str, unit: dict[str, Any]) -> dict[str, Any]:
        token = f"ct-{unit['id']}-{unit['attempt']}"
        self.claims[unit["id"]] = Claim(unit, token, node_id, unit["attempt"])
        lease = (datetime.now(UTC) + timedelta(seconds=self.lease_s)).isoformat()
        return {
            "claim_token": token,
            "attempt": unit["attempt"],
            "lease_expires_at": lease,
            "work_unit": unit,
        }

    async def _poll(self, node_id: str, body: dict[str, Any]) -> httpx.Response:
        self.polls.append(body)
        try:
            reply = await self._held_poll(node_id, body)
        except asyncio.CancelledError:
            self.cut_polls += 1
            raise
        self.answered_polls += 1
        return reply

    async def _held_poll(self, node_id: str, body: dict[str, Any]) -> httpx.Response:
        if not self.pending:
            self._work.clear()
            try:
                await asyncio.wait_for(self._work.wait(), body["wait_s"])
            except TimeoutError:
                pass
        want = body["max_units"] + self.overdeliver
        taken = [self.pending.popleft() for _ in range(min(want, len(self.pending)))]
        if body.get("claim") and not self.offer_only:
            granted = [self._grant(node_id, u) for u in taken]
            if granted and self.poll_reply_delay_s:
                self._changed.set()
                await asyncio.sleep(self.poll_reply_delay_s)
            return httpx.Response(200, json={"assignments": [], "claims": granted})
        for unit in taken:
            self.offered[unit["id"]] = unit
        return httpx.Response(200, json={"assignments": taken, "claims": []})

    def _claim_offer(self, node_id: str, unit_id: str, body: dict[str, Any]) -> httpx.Response:
        if unit_id in self.claims:
            return problem(409, "already_claimed", unit_id)
        unit = self.offered.get(unit_id)
        if unit is None or unit["attempt"] != body["attempt"]:
            return problem(409, "not_claimable", unit_id)
        return httpx.Response(200, json=self._grant(node_id, unit))
