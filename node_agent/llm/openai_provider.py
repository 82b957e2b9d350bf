"""The ``openai`` provider: the official SDK against any OpenAI-compatible server.

``KRAKO_OPENAI_BASE_URL`` points it at OpenAI, vLLM, llama.cpp, Ollama, ...; the SDK retries
429, 5xx, timeouts and dropped connections ``KRAKO_OPENAI_MAX_RETRIES`` times (honouring
``Retry-After``), each try bounded by ``KRAKO_OPENAI_TIMEOUT_S``. What still fails becomes an
``LlmError``: retryable for 429, 5xx, 408/409, timeouts, connection errors and unreadable
replies; not retryable for other 4xx (bad request, auth, unknown model).

Usage comes from the reply; a server that sends none gets the stub's word-count estimate,
flagged ``usage_estimated``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import openai

from node_agent.errors import ConfigError, LlmError
from node_agent.llm.base import LlmRequest, LlmResponse, count_words, message_text

if TYPE_CHECKING:
    from node_agent.settings import AgentSettings

PLACEHOLDER_KEY = "krako-no-api-key"  # local servers (vLLM, Ollama) accept any key
_RETRYABLE_STATUS = frozenset({408, 409, 429})


def _error_for(exc: openai.OpenAIError) -> LlmError:
    if isinstance(exc, openai.APITimeoutError):
        return LlmError(f"LLM request timed out: {exc}", retryable=True, code="llm_timeout")
    if isinstance(exc, openai.APIConnectionError):
        return LlmError(f"LLM server unreachable: {exc}", retryable=True, code="llm_unreachable")
    if isinstance(exc, openai.APIResponseValidationError):
        return LlmError(f"LLM reply unreadable: {exc}", retryable=True, code="llm_bad_response")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        return LlmError(
            f"LLM server answered {status}: {exc.message}",
            retryable=retryable,
            code="llm_rate_limited" if status == 429 else f"llm_http_{status}",
        )
    return LlmError(f"LLM call failed: {type(exc).__name__}: {exc}", retryable=True)


class OpenAILlmClient:
    """Chat completions through ``openai.AsyncOpenAI``."""

    provider = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout_s: float,
        max_retries: int,
        max_tokens_param: str = "max_tokens",
        http_client: Any = None,
    ) -> None:
        """``http_client`` (an ``httpx``/``httpx2`` ``AsyncClient``) is for tests and proxies."""
        if api_key is None and not os.environ.get("OPENAI_API_KEY"):
            if base_url is None:
                raise ConfigError(
                    "the openai provider needs KRAKO_OPENAI_API_KEY (or OPENAI_API_KEY), "
                    "or KRAKO_OPENAI_BASE_URL for a server without keys"
                )
            api_key = PLACEHOLDER_KEY
        kwargs: dict[str, Any] = {
            "api_key": api_key,
            "timeout": timeout_s,
            "max_retries": max_retries,
        }
        if base_url is not None:
            kwargs["base_url"] = base_url
        if http_client is not None:
            kwargs["http_client"] = http_client
        self._client = openai.AsyncOpenAI(**kwargs)
        self._max_tokens_param = max_tokens_param

    @classmethod
    def from_settings(cls, settings: AgentSettings, **overrides: Any) -> OpenAILlmClient:
        """Build from ``KRAKO_OPENAI_*`` settings."""
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        kwargs: dict[str, Any] = {
            "api_key": key,
            "base_url": settings.openai_base_url,
            "timeout_s": settings.openai_timeout_s,
            "max_retries": settings.openai_max_retries,
            "max_tokens_param": settings.openai_max_tokens_param,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    async def complete(self, request: LlmRequest) -> LlmResponse:
        """One chat completion; usage from the reply."""
        extra: dict[str, Any] = {}
        if request.max_tokens is not None:
            extra[self._max_tokens_param] = request.max_tokens
        try:
            completion = await self._client.chat.completions.create(
                model=request.model,
                messages=request.messages,  # type: ignore[arg-type]
                **extra,
            )
        except openai.OpenAIError as exc:
            raise _error_for(exc) from exc
        return _response_from(completion, request)

    async def aclose(self) -> None:
        """Close the SDK's connection pool."""
        await self._client.close()


def _response_from(completion: Any, request: LlmRequest) -> LlmResponse:
    """Read text and usage defensively: compatible servers differ, and the SDK does not
    validate replies (a malformed body surfaces here as missing attributes)."""
    try:
        choices = completion.choices
        first = choices[0]
        text = first.message.content or ""
        finish_reason = getattr(first, "finish_reason", None)
    except (AttributeError, IndexError, TypeError, KeyError) as exc:
        raise LlmError(
            f"LLM reply has no choices/message: {str(completion)[:200]}",
            retryable=True,
            code="llm_bad_response",
        ) from exc
    model = getattr(completion, "model", None) or request.model
    usage = getattr(completion, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
        return LlmResponse(
            text=text,
            model=str(model),
            tokens_in=prompt_tokens,
            tokens_out=completion_tokens,
            finish_reason=finish_reason,
        )
    return LlmResponse(
        text=text,
        model=str(model),
        tokens_in=count_words(message_text(request.messages)),
        tokens_out=count_words(text) if text else 0,
        finish_reason=finish_reason,
        usage_estimated=True,
    )
