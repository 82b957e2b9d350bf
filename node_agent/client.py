"""The one module that talks HTTP to the control plane (API.md, node routes).

Every method sends one request and either returns the parsed reply or raises one of
:mod:`node_agent.errors`: ``ControlPlaneUnavailable`` for what is safe to try again
(connection refused or dropped, timeouts, 5xx, 429), ``Unauthorized`` (401),
``Conflict`` (409) and ``RequestRejected`` for other 4xx problems. Retrying is the caller's
decision, because only the caller knows whether an operation is safe to repeat.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from node_agent.errors import (
    Conflict,
    ControlPlaneUnavailable,
    RequestRejected,
    Unauthorized,
)
from shared.wire import (
    ClaimReply,
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatReply,
    HeartbeatRequest,
    LlmInvocationReport,
    NodeRegister,
    NodeRegistration,
    PollReply,
    PollRequest,
    Problem,
)

Transport = httpx.AsyncBaseTransport
"""What ``transport=`` accepts (tests pass ``httpx.MockTransport``)."""

_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def _id(value: str) -> str:
    return quote(value, safe="")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class ControlPlaneClient:
    """Async client of the control plane's node API.

    ``node_token`` is set by :meth:`register` and sent with every later call. The timeout of
    a poll is its hold time plus ``poll_timeout_margin_s``, so a long-poll is never cut by
    the client while the server still holds it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        http_timeout_s: float = 10.0,
        poll_timeout_margin_s: float = 10.0,
        max_connections: int = 16,
        transport: Transport | None = None,
        user_agent: str = "krako-agent",
    ) -> None:
        self._poll_margin_s = poll_timeout_margin_s
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(http_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": user_agent, **_JSON},
            transport=transport,
        )
        self.node_token: str | None = None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _send(
        self,
        path: str,
        body: BaseModel,
        *,
        token: str | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        bearer = token if token is not None else self.node_token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        try:
            response = await self._http.post(
                path,
                content=body.model_dump_json(),
                headers=headers,
                timeout=httpx.Timeout(timeout_s)
                if timeout_s is not None
                else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise ControlPlaneUnavailable(f"timed out: POST {path}: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise ControlPlaneUnavailable(f"unreachable: POST {path}: {exc!r}") from exc
        if response.status_code >= 400:
            self._raise_for(response, path)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status >= 500 or status == 429:
            raise ControlPlaneUnavailable(
                f"POST {path} answered {status}",
                status=status,
                retry_after_s=_retry_after(response),
            )
        code, detail = f"http_{status}", response.text[:500]
        try:
            problem = Problem.model_validate_json(response.content)
            code, detail = problem.code, problem.detail
        except ValidationError:
            pass
        error: type[RequestRejected] = RequestRejected
        if status == 401:
            error = Unauthorized
        elif status == 409:
            error = Conflict
        raise error(status, code, detail)

    @staticmethod
    def _parse(model: type[Any], response: httpx.Response, path: str) -> Any:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            # A proxy's HTML page or a half-written body: treat like an outage, not a crash.
            raise ControlPlaneUnavailable(f"POST {path}: unreadable reply: {exc}") from exc

    # ------------------------------------------------------------------ node routes

    async def register(self, join_token: str, body: NodeRegister) -> NodeRegistration:
        """``POST /v1/nodes`` with the join token; keeps the returned node token."""
        path = "/v1/nodes"
        response = await self._send(path, body, token=join_token)
        registration: NodeRegistration = self._parse(NodeRegistration, response, path)
        self.node_token = registration.node_token
        return registration

    async def heartbeat(self, node_id: str, body: HeartbeatRequest) -> HeartbeatReply:
        """``POST /v1/nodes/{id}/heartbeat``: renew leases, learn what was revoked."""
        path = f"/v1/nodes/{_id(node_id)}/heartbeat"
        reply: HeartbeatReply = self._parse(HeartbeatReply, await self._send(path, body), path)
        return reply

    async def poll(self, node_id: str, body: PollRequest) -> PollReply:
        """``POST /v1/nodes/{id}/poll``: long-poll for offers or (``claim``) claims."""
        path = f"/v1/nodes/{_id(node_id)}/poll"
        response = await self._send(path, body, timeout_s=body.wait_s + self._poll_margin_s)
        reply: PollReply = self._parse(PollReply, response, path)
        return reply

    async def claim(self, unit_id: str, attempt: int) -> ClaimReply:
        """``POST /v1/workunits/{id}/claim`` for ``attempt``."""
        path = f"/v1/workunits/{_id(unit_id)}/claim"
        response = await self._send(path, ClaimRequest(attempt=attempt))
        reply: ClaimReply = self._parse(ClaimReply, response, path)
        return reply

    async def report_llm_invocation(self, unit_id: str, body: LlmInvocationReport) -> None:
        """``POST /v1/workunits/{id}/llm-invocations`` (idempotent by ``invocation_id``)."""
        await self._send(f"/v1/workunits/{_id(unit_id)}/llm-invocations", body)

    async def complete(self, unit_id: str, body: CompleteRequest) -> None:
        """``POST /v1/workunits/{id}/complete`` (the same completion again is a 200)."""
        await self._send(f"/v1/workunits/{_id(unit_id)}/complete", body)

    async def fail(self, unit_id: str, body: FailRequest) -> None:
        """``POST /v1/workunits/{id}/fail``."""
        await self._send(f"/v1/workunits/{_id(unit_id)}/fail", body)
