"""The one module that talks HTTP to the control plane (API.md, node routes).

Every method sends one request and either returns the parsed reply or raises one of
:mod:`node_agent.errors`: ``ControlPlaneUnavailable`` for what is safe to try again
(connection refused or dropped, timeouts, 5xx, 429), ``Unauthorized`` (401),
``Conflict`` (409) and ``RequestRejected`` for other 4xx problems. Retrying is the caller's
decision, because only the caller knows whether an operation is safe to repeat.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal
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
    CompletionReport,
    FailRequest,
    FailureReport,
    HeartbeatReply,
    HeartbeatRequest,
    LlmInvocationReport,
    NodeRegister,
    NodeRegistration,
    PollReply,
    PollRequest,
    Problem,
    ReportResult,
    ReportsReply,
    ReportsRequest,
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
        batch_reports: bool = True,
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
        self.node_id: str | None = None
        # Completions and failures are sent in batches: while one batch request is in
        # flight, the reports that come meanwhile wait and go together in the next one.
        self.batch_reports = batch_reports
        self._pending: list[tuple[Literal["c", "f"], BaseModel, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._flusher is not None:
            self._flusher.cancel()
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
        self.node_id = registration.node_id
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
        """Report success (the same completion again is a 200): batched through
        ``POST /v1/nodes/{id}/reports``, or ``POST /v1/workunits/{id}/complete`` alone."""
        if self.batch_reports and self.node_id is not None:
            item = CompletionReport(work_unit_id=unit_id, **dict(body))
            await self._enqueue("c", item)
            return
        await self._send(f"/v1/workunits/{_id(unit_id)}/complete", body)

    async def fail(self, unit_id: str, body: FailRequest) -> None:
        """Report failure: batched like ``complete``, or ``POST /v1/workunits/{id}/fail``."""
        if self.batch_reports and self.node_id is not None:
            await self._enqueue("f", FailureReport(work_unit_id=unit_id, **dict(body)))
            return
        await self._send(f"/v1/workunits/{_id(unit_id)}/fail", body)

    # ------------------------------------------------------------------ batched reports

    async def _enqueue(self, kind: Literal["c", "f"], item: BaseModel) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await future

    async def _flush(self) -> None:
        """Send what is pending, one batch request at a time, until nothing is left. Each
        report's caller gets its own outcome, raised as the single-unit route would."""
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            batch = [entry for entry in batch if not entry[2].done()]
            if not batch:
                continue
            node_id = self.node_id
            assert node_id is not None
            path = f"/v1/nodes/{_id(node_id)}/reports"
            body = ReportsRequest(
                completions=[i for k, i, _ in batch if k == "c"],  # type: ignore[misc]
                failures=[i for k, i, _ in batch if k == "f"],  # type: ignore[misc]
            )
            try:
                reply: ReportsReply = self._parse(ReportsReply, await self._send(path, body), path)
                results = iter([*reply.completions, *reply.failures])
                ordered = [e for e in batch if e[0] == "c"] + [e for e in batch if e[0] == "f"]
                for (_, _, future), result in zip(ordered, results, strict=True):
                    _settle(future, result, path)
            except Exception as exc:  # the whole request failed: every caller retries
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)


def _settle(future: asyncio.Future[None], result: ReportResult, path: str) -> None:
    if future.done():
        return
    if result.status < 400:
        future.set_result(None)
        return
    problem = result.error
    code = problem.code if problem is not None else f"http_{result.status}"
    detail = problem.detail if problem is not None else ""
    if result.status >= 500 or result.status == 429:
        future.set_exception(
            ControlPlaneUnavailable(
                f"POST {path} item answered {result.status}", status=result.status
            )
        )
        return
    error: type[RequestRejected] = RequestRejected
    if result.status == 401:
        error = Unauthorized
    elif result.status == 409:
        error = Conflict
    future.set_exception(error(result.status, code, detail))
