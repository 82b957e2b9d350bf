"""Trust and health bookkeeping inside the commands' transactions (filled in with the trust
model: completions raise a node's score, failures and lease expiries lower it)."""

from __future__ import annotations

from control_plane.db.uow import UnitOfWork
from shared.enums import NodeHealth
from shared.events import EventType


def record_outcome(uow: UnitOfWork, node_id: str | None, outcome: EventType) -> None:
    """Fold one outcome into the node's trust score (appends trust.score.changed if it moves)."""
    return None


def apply_health(uow: UnitOfWork, node_id: str, health: NodeHealth) -> None:
    """Fold a health change into the node's trust score."""
    return None
