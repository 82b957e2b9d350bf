"""A deterministic LLM, so tests, demos and replays give the same tokens every time.

The rule, for a request with text ``T`` (the prompt, or the messages' text contents joined
with newlines) and ``D = sha256(T as UTF-8)``:

- ``tokens_in = max(1, number of whitespace-separated words of T)``;
- ``natural = 16 + (int(D[:4] as hex) mod 49)``, a length in 16..64 fixed by the prompt;
- ``tokens_out = min(max_tokens or 64, natural)``;
- the text is ``tokens_out`` words; word ``i`` is the first 8 hex digits of
  ``sha256(D + ":" + str(i))``;
- the model is the request's model (the payload's or the default); finish reason ``stop``
  when ``natural`` fit, else ``length``.

No randomness, no clock, no network.
"""

from __future__ import annotations

import hashlib
import time

from node_agent.llm.base import LlmRequest, LlmResponse, count_words, message_text

DEFAULT_MAX_TOKENS = 64


def stub_completion(request: LlmRequest) -> LlmResponse:
    """Apply the rule above (pure)."""
    start = time.thread_time()
    text = message_text(request.messages)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    tokens_in = count_words(text)
    natural = 16 + int(digest[:4], 16) % 49
    cap = request.max_tokens or DEFAULT_MAX_TOKENS
    tokens_out = min(cap, natural)
    words = [hashlib.sha256(f"{digest}:{i}".encode()).hexdigest()[:8] for i in range(tokens_out)]
    return LlmResponse(
        text=" ".join(words),
        model=request.model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        finish_reason="stop" if natural <= cap else "length",
        cpu_s=time.thread_time() - start,
    )


class StubLlmClient:
    """The ``stub`` provider: :func:`stub_completion`, no I/O."""

    provider = "stub"

    async def complete(self, request: LlmRequest) -> LlmResponse:
        """Answer deterministically (see the module docstring)."""
        return stub_completion(request)

    async def aclose(self) -> None:
        """Nothing to release."""
        return None
