"""Replies of the hot routes: the wire model serialized once, by pydantic.

FastAPI validates a route's returned model against its response model again and then encodes
it through ``jsonable_encoder``; on the routes every unit passes through (submit, read, claim,
poll, heartbeat, the reports) that is a noticeable share of a command's CPU. Those routes
declare ``response_model=`` (so the OpenAPI document is the same) and return these bytes."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as JSON, exactly as FastAPI would serialize it (by alias, JSON mode)."""
    body = type(model).__pydantic_serializer__.to_json(model, by_alias=True)
    return Response(content=body, status_code=status_code, media_type="application/json")
