"""Dependencies as ``Annotated`` aliases: the app's services and the caller's identity, typed
so that a route receives what it needs and checks nothing itself.

- ``ServicesDep``: the app's ``Services`` (settings, database, notifier, scheduler, ...).
- ``Admin``: the admin token. ``TenantId``: the calling tenant's id. ``NodeId``: the calling
  node's id, which is also the ``{node_id}`` of the path where the path names one. ``Viewer``:
  a tenant (``tenant_id`` set: it sees its own) or the admin (``tenant_id`` None: everything).
  ``JoinToken``: the node join token (registration only).

Roles (API.md): no token or an unknown one is 401; a valid token of the wrong role, or a node
token on another node's path, is 403. Tokens are compared in constant time (admin, join) or
looked up by their SHA-256 (``tenants.auth``), through the app's cache on the hot path.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread,
a hop per request that buys nothing here.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from control_plane.errors import Forbidden, Unauthorized
from control_plane.ids import token_hash
from control_plane.services import Services
from control_plane.tenants.auth import Principal, Role, identify


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


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


async def principal(request: Request, services: ServicesDep) -> Principal:
    """Who is calling (401 when nobody we know)."""
    token = bearer(request)
    api = services.settings.api
    if _equal(api.admin_token, token):
        return Principal("admin")
    digest = token_hash(token)
    cache = services.auth_cache
    now = time.monotonic()
    hit = cache.get(digest, now)
    if hit is not None:
        return hit
    found = await run_in_threadpool(identify, services.db, digest)
    if found is None:
        if _equal(api.node_join_token, token):
            raise Forbidden("the join token only registers nodes")
        raise Unauthorized("unknown token")
    cache.put(digest, found, now)
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]


# OpenAPI only: one HTTP bearer scheme per role, so the document says which token an
# operation takes. The schemes never read the request (``principal`` has parsed the header once,
# and ``principal`` and the ``require_*`` checks below decide), so the 401/403 replies are
# exactly those of the checks and the hot routes pay nothing for the documentation.
class _DocumentedBearer(HTTPBearer):
    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


def _scheme(name: str, description: str) -> object:
    return Depends(_DocumentedBearer(scheme_name=name, description=description, auto_error=False))


_AdminScheme = Annotated[
    None, _scheme("adminToken", "The admin token (`KRAKO_ADMIN_TOKEN`): the admin role.")
]
_TenantScheme = Annotated[
    None,
    _scheme("tenantToken", "A tenant's API token (issued by POST /v1/tenants): the tenant role."),
]
_NodeScheme = Annotated[
    None, _scheme("nodeToken", "A node's token (returned when the node registers): the node role.")
]
_JoinScheme = Annotated[
    None,
    _scheme(
        "nodeJoinToken", "The node join token (`KRAKO_NODE_JOIN_TOKEN`): registers nodes only."
    ),
]


def _wrong_role(*roles: Role) -> Forbidden:
    return Forbidden(f"this operation needs the {' or '.join(roles)} role")


@dataclass(frozen=True, slots=True)
class ViewerIdentity:
    """A tenant or the admin, reading. ``tenant_id`` scopes what it sees (None: the admin,
    who sees every tenant's objects)."""

    tenant_id: str | None

    @property
    def actor(self) -> str:
        """How the log names it (``tenant:<id>`` or ``admin``)."""
        return f"tenant:{self.tenant_id}" if self.tenant_id is not None else "admin"


async def require_admin(_: _AdminScheme, p: PrincipalDep) -> Principal:
    if p.role != "admin":
        raise _wrong_role("admin")
    return p


async def require_tenant(_: _TenantScheme, p: PrincipalDep) -> str:
    if p.role != "tenant" or p.tenant_id is None:
        raise _wrong_role("tenant")
    return p.tenant_id


async def require_viewer(_t: _TenantScheme, _a: _AdminScheme, p: PrincipalDep) -> ViewerIdentity:
    if p.role == "admin":
        return ViewerIdentity(None)
    if p.role != "tenant" or p.tenant_id is None:
        raise _wrong_role("tenant", "admin")
    return ViewerIdentity(p.tenant_id)


async def require_node(request: Request, _: _NodeScheme, p: PrincipalDep) -> str:
    """The calling node's id; on a path that names a node, a node token acts only on its own
    node's (403 otherwise)."""
    if p.role != "node" or p.node_id is None:
        raise _wrong_role("node")
    on_path = request.path_params.get("node_id")
    if on_path is not None and on_path != p.node_id:
        raise Forbidden("a node token acts only on its own node")
    return p.node_id


async def require_join_token(request: Request, _: _JoinScheme, services: ServicesDep) -> None:
    token = bearer(request)
    if _equal(services.settings.api.node_join_token, token):
        return
    await principal(request, services)  # 401 for an unknown token
    raise Forbidden("registering a node needs the join token")


Admin = Annotated[Principal, Depends(require_admin)]
TenantId = Annotated[str, Depends(require_tenant)]
Viewer = Annotated[ViewerIdentity, Depends(require_viewer)]
NodeId = Annotated[str, Depends(require_node)]
JoinToken = Annotated[None, Depends(require_join_token)]
