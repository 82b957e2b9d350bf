"""The control plane over HTTP: one client for the ``krako`` commands and the demo.

Errors::

    CliError              ends a command with ``exit_code`` (one of the EXIT_* codes)
     ├── ProblemError     the control plane answered non-2xx: ``status``, ``code``, ``problem``
     └── UnreachableError no answer at all: connection refused, timeout, a broken connection

Only what is safe to repeat is retried, and only when the caller gives a retry budget
(``retry_s``): reads, and submissions carrying an ``Idempotency-Key``. Retries back off
exponentially with jitter and ride out transport errors and 502/503/504.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from shared.events import Event
from shared.wire import WorkUnit

DEFAULT_URL = "http://127.0.0.1:8080"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130

#: replies worth another try when the caller gave a retry budget (a replica restarting)
RETRY_STATUSES = frozenset({502, 503, 504})


class CliError(Exception):
    """A failure that ends the command with ``exit_code`` (one of the EXIT_* codes).

    ``problem`` is what ``--json`` prints: the problem details the control plane sent, or
    one made up in the same shape."""

    def __init__(
        self, message: str, exit_code: int, problem: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.problem = problem


class ProblemError(CliError):
    """The control plane refused the request: its HTTP ``status`` and problem ``code``."""

    def __init__(
        self,
        message: str,
        problem: Mapping[str, Any],
        *,
        status: int,
        code: str | None,
        retry_after: str | None,
    ) -> None:
        super().__init__(message, exit_code_for(status), problem)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class UnreachableError(CliError):
    """No reply from the control plane (connection refused, timeout, broken connection)."""


def exit_code_for(status: int) -> int:
    """The exit code of a non-2xx reply."""
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (400, 413, 422):
        return EXIT_USAGE
    if status >= 500:
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def problem_error(response: httpx.Response) -> ProblemError:
    """The error for a non-2xx reply: its problem details, or what the body says."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    title = str(problem.get("title") or response.reason_phrase or f"HTTP {status}")
    code = problem.get("code")
    detail = problem.get("detail")
    if detail is None and not problem:
        detail = response.text.strip()[:300] or None
    message = f"{title} ({code})" if code else f"{title} (HTTP {status})"
    if detail:
        message += f": {detail}"
    for item in problem.get("errors") or []:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", []))
            message += f"\n  - {loc}: {item.get('msg')}"
    if status == 401:
        message += "\n  (pass --token or set KRAKO_TOKEN: the admin token or a tenant API key)"
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        message += f"\n  (retry after {retry_after} s)"
    if not problem:
        problem = {"title": title, "status": status, "detail": detail, "code": code}
    return ProblemError(
        message,
        problem,
        status=status,
        code=str(code) if code else None,
        retry_after=retry_after,
    )


@dataclass(frozen=True)
class Runtime:
    """Where and who. ``transport`` replaces the network (tests pass a MockTransport)."""

    url: str = DEFAULT_URL
    token: str | None = None
    transport: httpx.BaseTransport | None = None


class Api:
    """The control plane over HTTP as one identity: every non-2xx reply is a ProblemError,
    no reply at all an UnreachableError."""

    def __init__(self, rt: Runtime) -> None:
        headers = {"User-Agent": "krako-cli"}
        if rt.token:
            headers["Authorization"] = f"Bearer {rt.token}"
        self.url = rt.url
        self._client = httpx.Client(
            base_url=rt.url,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=rt.transport,
        )

    def close(self) -> None:
        self._client.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float = 30.0,
        retry_s: float = 0.0,
        stream: bool = False,
    ) -> httpx.Response:
        """One request (parameters that are None are left out); a 2xx reply, or CliError.

        ``retry_s``: how long to keep trying through outages; give it only for requests
        that are safe to repeat. ``stream``: the body is not read yet."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(read_timeout, connect=5.0)
        deadline = time.monotonic() + retry_s
        delay = 0.2
        while True:
            request = self._client.build_request(
                method, path, params=clean, json=body, headers=headers, timeout=timeout
            )
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if time.monotonic() + delay < deadline:
                    delay = _pause(delay)
                    continue
                raise UnreachableError(
                    f"cannot reach the control plane at {self.url}: {exc or type(exc).__name__}",
                    EXIT_UNREACHABLE,
                    {"title": "Unreachable", "detail": str(exc), "code": "unreachable"},
                ) from exc
            if response.status_code in RETRY_STATUSES and time.monotonic() + delay < deadline:
                response.close()
                delay = _pause(delay)
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise problem_error(response)
            return response

    def get(self, path: str, **kw: Any) -> Any:
        """GET ``path``; the decoded JSON body."""
        return self.send("GET", path, **kw).json()

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        """POST ``body`` as JSON to ``path``; the decoded JSON body."""
        return self.send("POST", path, body=body, **kw).json()

    def pages(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        key: str = "items",
        cursor: str | None = None,
    ) -> Iterator[Any]:
        """Every item (under ``key``) of a cursor-paginated list, from ``cursor`` on."""
        while True:
            page = self.get(path, params={**(params or {}), "limit": 1000, "cursor": cursor})
            yield from page.get(key, [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def unit(self, unit_id: str) -> WorkUnit:
        """The work unit as it is now."""
        return WorkUnit.model_validate(self.get(f"/v1/workunits/{unit_id}"))

    def unit_events(self, unit_id: str) -> list[Event]:
        """The unit's events in log order."""
        raw = self.get(f"/v1/workunits/{unit_id}/events").get("events", [])
        return [Event.model_validate(e) for e in raw]


def _pause(delay: float) -> float:
    """Sleep a jittered ``delay``; the next one (exponential, capped at 5 s)."""
    time.sleep(delay * random.uniform(0.5, 1.0))
    return min(delay * 2, 5.0)
