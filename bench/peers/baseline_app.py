"""The baseline server: the smallest FastAPI app doing what a submit does at the HTTP layer
(parse and validate a small pydantic body, answer 201 with JSON), on uvicorn with one worker
and the same server options as the control plane. Run as a script: ``baseline_app.py PORT``."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Unit(BaseModel):
    kind: str
    execution_session_id: str
    payload: dict[str, str]


app = FastAPI()


@app.post("/v1/items", status_code=201)
async def create(unit: Unit) -> Unit:
    return unit


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
