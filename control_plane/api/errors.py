"""The one place errors become RFC 9457 problem details (``application/problem+json``)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from control_plane.errors import KrakoError
from shared.wire import Problem

log = logging.getLogger("krako.api")

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Validation error"),
}


def problem_body(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://krako.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    return Response(
        orjson.dumps(problem_body(status, code, title, detail, **extra)),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def error_problem(exc: KrakoError) -> dict[str, Any]:
    return problem_body(exc.status, exc.code, exc.title, exc.detail, **exc.extra)


def problem_model(exc: KrakoError) -> Problem:
    """The error as the Problem model, for per-item results of batch routes."""
    return Problem.model_validate(error_problem(exc))


def krako_error_response(exc: KrakoError) -> Response:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(int(exc.retry_after_s))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, headers=headers or None, **exc.extra
    )


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        item = {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")}
        out.append(item)
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(KrakoError)
    async def _krako(_: Request, exc: KrakoError) -> Response:
        return krako_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = _clean_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return problem_response(422, "validation_error", "Validation error", detail, errors=errors)

    @app.exception_handler(DataError)
    @app.exception_handler(OverflowError)
    @app.exception_handler(UnicodeEncodeError)
    async def _unstorable(_: Request, exc: Exception) -> Response:
        # The database (or its driver) refused a value the caller sent: a NUL character in
        # text on PostgreSQL, an integer beyond 64 bits, a lone surrogate. That is bad input,
        # not a server fault; the transaction that met it rolled back, so nothing changed.
        log.info("refused an unstorable value: %s", exc.__class__.__name__)
        return problem_response(
            422,
            "invalid_input",
            "Invalid input",
            "a value in the request cannot be stored (NUL characters, lone surrogates and "
            "integers beyond 64 bits are refused)",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        return problem_response(
            exc.status_code, code, title, str(exc.detail), headers=dict(exc.headers or {}) or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(
            500, "internal_error", "Internal error", "an unexpected error occurred"
        )


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json replies for ``statuses``."""
    return {
        s: {"model": Problem, "description": _HTTP_CODES.get(s, ("", "Problem"))[1] or "Problem"}
        for s in statuses
    }
