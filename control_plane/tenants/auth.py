"""Who is calling: the principal a bearer token stands for, and the in-process cache that
saves the lookup on the hot path.

Roles (API.md): admin (``KRAKO_ADMIN_TOKEN``), tenant (API key), node (node token). Tenant
keys and node tokens are stored only hashed, so a token is looked up by its SHA-256. The HTTP
side (the ``Authorization`` header, 401 and 403) is ``control_plane.api.deps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import bindparam, select

from control_plane.db.engine import Database
from control_plane.db.tables import nodes, tenants

Role = Literal["admin", "tenant", "node"]

# Node tokens change when an agent re-registers, so their cache entries live briefly.
NODE_TTL_S = 2.0
TENANT_TTL_S = 300.0
_CACHE_MAX = 50_000

_TENANT_BY_KEY = select(tenants.c.tenant_id).where(tenants.c.api_key_hash == bindparam("b_h"))
_NODE_BY_TOKEN = select(nodes.c.node_id).where(nodes.c.token_hash == bindparam("b_h"))


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    tenant_id: str | None = None
    node_id: str | None = None


class AuthCache:
    """Principals by token digest, each until its time to live runs out (``now`` is the
    caller's monotonic clock). One per app; the node commands' route forgets a node's entries
    when it registers again."""

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

    def put(self, digest: str, principal: Principal, now: float) -> None:
        if len(self.entries) >= _CACHE_MAX:
            self.entries.clear()
        ttl = NODE_TTL_S if principal.role == "node" else TENANT_TTL_S
        self.entries[digest] = (principal, now + ttl)

    def forget_node(self, node_id: str) -> None:
        for key in [k for k, (p, _) in self.entries.items() if p.node_id == node_id]:
            self.entries.pop(key, None)


def identify(db: Database, digest: str) -> Principal | None:
    """The tenant whose API key, or the node whose token, hashes to ``digest`` (or nobody)."""
    with db.engine.connect() as conn:
        tenant = conn.execute(_TENANT_BY_KEY, {"b_h": digest}).scalar()
        if tenant is not None:
            return Principal("tenant", tenant_id=str(tenant))
        node = conn.execute(_NODE_BY_TOKEN, {"b_h": digest}).scalar()
        if node is not None:
            return Principal("node", node_id=str(node))
    return None
