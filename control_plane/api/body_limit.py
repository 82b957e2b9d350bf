"""Refuse request bodies over ``KRAKO_MAX_BODY_BYTES`` with 413 ``payload_too_large``, both when
``Content-Length`` says so and when a chunked body grows past the limit."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.errors import problem_response


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # whatever the app answers to the body it could not read (FastAPI turns the
                # read error into 400) is replaced by the 413 below
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            pass
        if exceeded and not started:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "payload_too_large",
            "Payload too large",
            f"request body exceeds the limit of {self.max_bytes} bytes",
        )
        await response(scope, receive, send)


class RequireBearerMiddleware:
    """Every ``/v1`` route needs ``Authorization: Bearer <token>``: refuse a request without
    one with 401 before its body is parsed, so a malformed body with no token is a 401 (who
    you are comes before what you sent). Which token, and its role, the routes decide."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1/"):
            header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
            scheme, _, token = header.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                detail = (
                    "missing Authorization: Bearer <token>"
                    if not header
                    else "Authorization must be 'Bearer <token>'"
                )
                response = problem_response(
                    401,
                    "unauthorized",
                    "Unauthorized",
                    detail,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
