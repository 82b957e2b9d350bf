"""Dependencies as ``Annotated`` aliases: the app's singletons and the caller's identity.

Roles (API.md): admin (``KRAKO_ADMIN_TOKEN``), tenant (API key), node (node token). No token or
an unknown one is 401; a valid token of the wrong role is 403. Tokens are compared in constant
time (admin, join) or looked up by their SHA-256 (tenant keys and node tokens are stored only
hashed). A small in-process cache saves the lookup on the hot path.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from control_plane.db.engine import Database
from control_plane.errors import Forbidden, Unauthorized
from control_plane.eventlog.wait import Notifier
from control_plane.ids import token_hash
from control_plane.scheduling.scheduler import SchedulerContext
from control_plane.settings import Settings
from control_plane.tenants.commands import node_by_token_hash, tenant_by_key_hash

Role = Literal["admin", "tenant", "node"]

# Node tokens change when an agent re-registers, so their cache entries live briefly.
_NODE_CACHE_S = 2.0
_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    tenant_id: str | None = None
    node_id: str | None = None


class AuthCache:
    def __init__(self) -> None:
        self.entries: dict[str, tuple[Principal, float]] = {}

    def get(self, digest: str, now: float) -> Principal | None:
        hit = self.entries.get(digest)
        if hit is None:
            return None
        principal, expires = hit
        if expires < now:
            del self.entries[digest]
            return None
        return principal

    def put(self, digest: str, principal: Principal, ttl: float, now: float) -> None:
        if len(self.entries) >= _CACHE_MAX:
            self.entries.clear()
        self.entries[digest] = (principal, now + ttl)

    def forget_node(self, node_id: str) -> None:
        for key in [k for k, (p, _) in self.entries.items() if p.node_id == node_id]:
            self.entries.pop(key, None)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_ctx(request: Request) -> SchedulerContext:
    ctx: SchedulerContext = request.app.state.scheduler_ctx
    return ctx


def get_notifier(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.notifier
    return notifier


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
CtxDep = Annotated[SchedulerContext, Depends(get_ctx)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return token


def _equal(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


async def principal(request: Request) -> Principal:
    """Who is calling (401 when nobody we know)."""
    token = bearer(request)
    settings: Settings = request.app.state.settings
    if _equal(settings.api.admin_token, token):
        return Principal("admin")
    digest = token_hash(token)
    cache: AuthCache = request.app.state.auth_cache
    now = time.monotonic()
    hit = cache.get(digest, now)
    if hit is not None:
        return hit
    db: Database = request.app.state.db

    def lookup() -> Principal | None:
        with db.engine.connect() as conn:
            tenant = tenant_by_key_hash(conn, digest)
            if tenant is not None:
                return Principal("tenant", tenant_id=tenant)
            node = node_by_token_hash(conn, digest)
            if node is not None:
                return Principal("node", node_id=node)
        return None

    found = await run_in_threadpool(lookup)
    if found is None:
        if _equal(settings.api.node_join_token, token):
            raise Forbidden("the join token only registers nodes")
        raise Unauthorized("unknown token")
    cache.put(digest, found, _NODE_CACHE_S if found.role == "node" else 300.0, now)
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]


def _role(p: Principal, *roles: Role) -> Principal:
    if p.role not in roles:
        raise Forbidden(f"this operation needs the {' or '.join(roles)} role")
    return p


async def require_admin(p: PrincipalDep) -> Principal:
    return _role(p, "admin")


async def require_tenant(p: PrincipalDep) -> Principal:
    return _role(p, "tenant")


async def require_tenant_or_admin(p: PrincipalDep) -> Principal:
    return _role(p, "tenant", "admin")


async def require_node(p: PrincipalDep) -> Principal:
    return _role(p, "node")


async def require_join_token(request: Request) -> None:
    token = bearer(request)
    settings: Settings = request.app.state.settings
    if _equal(settings.api.node_join_token, token):
        return
    await principal(request)  # 401 for an unknown token
    raise Forbidden("registering a node needs the join token")


Admin = Annotated[Principal, Depends(require_admin)]
TenantP = Annotated[Principal, Depends(require_tenant)]
TenantOrAdmin = Annotated[Principal, Depends(require_tenant_or_admin)]
NodeP = Annotated[Principal, Depends(require_node)]
JoinToken = Annotated[None, Depends(require_join_token)]


def node_path_guard(p: Principal, node_id: str) -> str:
    """A node token acts only on its own node's paths (403 otherwise)."""
    if p.node_id != node_id:
        raise Forbidden("a node token acts only on its own node")
    return node_id
