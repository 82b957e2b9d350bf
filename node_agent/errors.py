"""The node agent's one exception tree.

::

    AgentError                      every error the agent raises on purpose
    ├── ConfigError                 bad settings, handler specs or state dir (exit code 2)
    ├── GaveUp                      stopped retrying: the agent is stopping or the unit is gone
    ├── ControlPlaneError           a call to the control plane did not succeed
    │   ├── ControlPlaneUnavailable     retryable: connection refused or dropped, timeout,
    │   │                               5xx, 429 (``retry_after_s`` when the server said)
    │   └── RequestRejected             a 4xx problem+json reply (``status``, ``code``)
    │       ├── Unauthorized                401: the token is unknown (re-register)
    │       └── Conflict                    409: ``already_claimed``, ``not_claimable``,
    │                                       ``stale_claim``, ...
    └── ExecutionError              a unit's attempt failed (``code``, ``retryable``)
        ├── NonRetryableError           raised by a handler: do not try again
        ├── UnknownHandlerError         no handler of that name on this agent (non-retryable)
        ├── InvalidPayloadError         the payload cannot be run (non-retryable)
        ├── HandlerError                a handler raised (retryable)
        ├── UnitTimeoutError            the unit ran past its timeout (retryable)
        ├── UnsupportedKindError        no executor for the unit's kind here (retryable)
        └── LlmError                    the LLM provider failed (retryable per status)

Errors the agent sends to the control plane (``fail``) are built from ``ExecutionError``
with :meth:`ExecutionError.to_wire`.
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base of every error the node agent raises on purpose."""


class ConfigError(AgentError):
    """The agent cannot start with this configuration."""


class GaveUp(AgentError):
    """Retrying stopped because the agent is shutting down or the unit was revoked."""


# --------------------------------------------------------------------------- control plane


class ControlPlaneError(AgentError):
    """A request to the control plane did not succeed."""

    retryable: bool = False


class ControlPlaneUnavailable(ControlPlaneError):
    """The control plane could not be reached or answered 5xx/429: safe to try again later."""

    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class RequestRejected(ControlPlaneError):
    """The control plane refused the request with a 4xx problem (``code`` is stable)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Unauthorized(RequestRejected):
    """401: the token was not accepted (for a node token: register again)."""


class Conflict(RequestRejected):
    """409: the claim is taken, not offered to this node, or stale."""


# --------------------------------------------------------------------------- execution


class ExecutionError(AgentError):
    """An attempt of a unit failed; ``retryable`` says whether another attempt may succeed."""

    code: str = "execution_error"
    retryable: bool = True

    def __init__(
        self, message: str, *, retryable: bool | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        if code is not None:
            self.code = code

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` body of a ``fail`` report."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class NonRetryableError(ExecutionError):
    """Raise this from a handler to fail the unit without another attempt."""

    code = "non_retryable"
    retryable = False


class UnknownHandlerError(ExecutionError):
    """The payload names a handler this agent does not have."""

    code = "unknown_handler"
    retryable = False


class InvalidPayloadError(ExecutionError):
    """The payload (or a handler's args) is malformed: trying again cannot help."""

    code = "invalid_payload"
    retryable = False


class HandlerError(ExecutionError):
    """A handler raised an exception (retryable unless it raised ``NonRetryableError``)."""

    code = "handler_error"
    retryable = True


class UnitTimeoutError(ExecutionError):
    """The unit ran longer than its timeout."""

    code = "timeout"
    retryable = True


class UnsupportedKindError(ExecutionError):
    """This agent has no executor for the unit's kind (another node may have one)."""

    code = "unsupported_kind"
    retryable = True


class LlmError(ExecutionError):
    """The LLM provider failed; retryable for 429, 5xx, timeouts and dropped connections."""

    code = "llm_error"
    retryable = True
