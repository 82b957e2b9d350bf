"""The control plane's exception tree. Every error carries a stable ``code``, an HTTP
``status`` and whether a client may retry; ``api/errors.py`` is the one place they become
problem+json.

    KrakoError
    ├── BadRequest (400/422)        invalid_input, invalid_cursor, validation_error
    ├── Unauthorized (401)          unauthorized
    ├── Forbidden (403)             forbidden
    ├── NotFound (404)              not_found
    ├── Conflict (409)              already_claimed, not_claimable, stale_claim,
    │                               idempotency_conflict, already_terminal
    ├── PayloadTooLarge (413)       payload_too_large
    ├── BudgetExhausted (402)       budget_exhausted
    ├── TooManyRequests (429)       admission_rejected, rate_limited   (+ Retry-After)
    └── Unavailable (503)           not_ready
"""

from __future__ import annotations

from typing import Any


class KrakoError(Exception):
    status = 500
    code = "internal_error"
    title = "Internal error"
    retryable = False

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        retry_after_s: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s
        self.extra = extra or {}


class BadRequest(KrakoError):
    status = 422
    code = "invalid_input"
    title = "Invalid input"


class Unauthorized(KrakoError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(KrakoError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(KrakoError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(KrakoError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(KrakoError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class BudgetExhausted(KrakoError):
    status = 402
    code = "budget_exhausted"
    title = "Budget exhausted"


class TooManyRequests(KrakoError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"
    retryable = True


class Unavailable(KrakoError):
    status = 503
    code = "not_ready"
    title = "Not ready"
    retryable = True


def already_claimed(unit_id: str, attempt: int) -> Conflict:
    return Conflict(
        f"work unit {unit_id} attempt {attempt} was already claimed by another node",
        code="already_claimed",
    )


def not_claimable(unit_id: str, why: str) -> Conflict:
    return Conflict(
        f"work unit {unit_id} is not claimable by this node: {why}", code="not_claimable"
    )


def stale_claim(unit_id: str, why: str) -> Conflict:
    return Conflict(f"claim on work unit {unit_id} is stale: {why}", code="stale_claim")
