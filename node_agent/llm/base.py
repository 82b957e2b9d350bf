"""The one interface every LLM provider implements, and its request and response."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """A chat request: OpenAI-style ``messages``, the model, an optional output cap."""

    messages: list[dict[str, Any]]
    model: str
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class LlmResponse:
    """What came back: text, the model that answered, and token usage.

    ``usage_estimated`` is true when the server sent no usage and the counts were estimated
    with the stub's word rule. ``cpu_s`` is the local CPU time the provider spent (the stub's
    generation; zero for remote providers, whose work happens elsewhere).
    """

    text: str
    model: str
    tokens_in: int
    tokens_out: int
    finish_reason: str | None = None
    usage_estimated: bool = False
    cpu_s: float = field(default=0.0, compare=False)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.tokens_in + self.tokens_out


class LlmClient(Protocol):
    """An LLM provider (``stub`` or ``openai``); raises ``LlmError`` on failure."""

    provider: str

    async def complete(self, request: LlmRequest) -> LlmResponse:
        """Run one chat completion."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text content of ``messages`` joined by newlines (text parts of multi-part content)."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    parts.append(item["text"])
    return "\n".join(parts)


def count_words(text: str) -> int:
    """Whitespace-separated words, at least 1: the stub's token rule."""
    return max(1, len(text.split()))
