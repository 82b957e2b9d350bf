"""A small OpenAI-compatible chat-completions server, run as a real process in tests.

``uvicorn tests.agent.openai_compat_server:app --port N``. The reply echoes the last user
message; usage counts whitespace words (prompt: all message contents; completion: the reply,
cut to ``max_tokens``/``max_completion_tokens`` words). A prompt containing ``FAIL500:<key>``
gets a 500 the first time that key is seen (to exercise the SDK's retries), and
``NOUSAGE`` gets a reply without usage. ``GET /stats`` counts requests.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()
_seen: set[str] = set()
_stats: dict[str, Any] = {"requests": 0, "auth": []}


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return _stats


@app.post("/v1/chat/completions")
async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    _stats["requests"] += 1
    _stats["auth"].append(request.headers.get("authorization"))
    messages = body["messages"]
    prompt = "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))
    for word in prompt.split():
        if word.startswith("FAIL500:") and word not in _seen:
            _seen.add(word)
            return JSONResponse({"error": {"message": "transient", "type": "server"}}, 500)
    words = ("echo: " + messages[-1]["content"]).split()
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    if cap:
        words = words[:cap]
    reply: dict[str, Any] = {
        "id": f"chatcmpl-{_stats['requests']}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words)},
                "finish_reason": "length" if cap and len(words) == cap else "stop",
            }
        ],
    }
    if "NOUSAGE" not in prompt:
        reply["usage"] = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(words),
            "total_tokens": len(prompt.split()) + len(words),
        }
    return JSONResponse(reply)
