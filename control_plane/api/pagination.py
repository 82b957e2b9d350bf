"""Opaque, signed list cursors: a cursor the server did not hand out is 422 ``invalid_cursor``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import TypeVar

import orjson

from control_plane.errors import BadRequest

MAX_LIMIT = 1000

T = TypeVar("T")


def _key(secret: str) -> bytes:
    return hashlib.sha256(b"krako-cursor:" + secret.encode()).digest()


def encode_cursor(secret: str, scope: str, position: str) -> str:
    body = orjson.dumps({"s": scope, "p": position})
    mac = hmac.new(_key(secret), body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def decode_cursor(secret: str, scope: str, cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body, mac = raw[:-12], raw[-12:]
        good = hmac.new(_key(secret), body, hashlib.sha256).digest()[:12]
        if not hmac.compare_digest(mac, good):
            raise ValueError("bad signature")
        data = orjson.loads(body)
        if data.get("s") != scope:
            raise ValueError("cursor of another list")
        return str(data["p"])
    except Exception:
        raise BadRequest("cursor was not handed out by this list", code="invalid_cursor")


def cut_page(
    secret: str, scope: str, found: Sequence[T], limit: int, position: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """``found`` was read with ``limit + 1``: the page, and the cursor of the next one (None
    when this is the last)."""
    items = list(found[:limit])
    more = len(found) > limit and items
    return items, encode_cursor(secret, scope, position(items[-1])) if more else None
