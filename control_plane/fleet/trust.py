"""Trust bookkeeping inside the commands' transactions: the pure model
(``control_plane.fleet.trust_model``) folds each outcome into the node's score, and a change worth
reporting is appended as ``trust.score.changed`` in the same transaction."""

from __future__ import annotations

from sqlalchemy import bindparam, select, update

from control_plane.db.tables import nodes
from control_plane.db.uow import UnitOfWork
from control_plane.eventlog.emit import emit
from control_plane.fleet.trust_model import (
    Observation,
    Outcome,
    TrustChange,
    TrustParams,
    TrustState,
    apply,
    tick,
)
from shared.enums import NodeHealth
from shared.events import EventType

PARAMS = TrustParams()


_TRUST = select(
    nodes.c.trust,
    nodes.c.quarantined,
    nodes.c.trust_reported,
    nodes.c.quarantined_at_us,
    nodes.c.on_probation,
).where(nodes.c.node_id == bindparam("b_node"))


def _load(uow: UnitOfWork, node_id: str) -> TrustState | None:
    row = uow.conn.execute(_TRUST, {"b_node": node_id}).first()
    if row is None:
        return None
    return TrustState(
        score=float(row.trust),
        quarantined=bool(row.quarantined),
        reported=float(row.trust_reported) if row.trust_reported is not None else None,
        quarantined_at=(row.quarantined_at_us / 1e6 if row.quarantined_at_us is not None else None),
        on_probation=bool(row.on_probation),
    )


def _store(
    uow: UnitOfWork, node_id: str, old: TrustState, new: TrustState, change: TrustChange | None
) -> None:
    uow.conn.execute(
        update(nodes)
        .where(nodes.c.node_id == node_id)
        .values(
            trust=new.score,
            quarantined=new.quarantined,
            trust_reported=new.reported,
            quarantined_at_us=(
                int(new.quarantined_at * 1e6) if new.quarantined_at is not None else None
            ),
            on_probation=new.on_probation,
        )
    )
    if change is not None:
        emit(uow, change.payload(node_id), stream_id=node_id)
    if old.quarantined != new.quarantined:
        uow.wake("queue")


def _fold(uow: UnitOfWork, node_id: str, observation: Observation, times: int = 1) -> None:
    old = _load(uow, node_id)
    if old is None:
        return
    new, change, last = old, None, None
    for _ in range(times):
        new, change = apply(new, observation, PARAMS, uow.now_us / 1e6)
        if change is not None:
            last = change
    if last is not None:
        # one event for the batch, from the score before it to the score after it
        last = TrustChange(
            old.reported if old.reported is not None else old.score,
            new.score,
            last.reason,
            new.quarantined,
        )
    _store(uow, node_id, old, new, last)


def record_outcome(uow: UnitOfWork, node_id: str | None, outcome: Outcome | EventType) -> None:
    """Fold one outcome into the node's trust score; ``outcome`` is an ``Outcome`` or the event
    type that records it (completed, failed, lease expired)."""
    if node_id:
        _fold(uow, node_id, Outcome(outcome))


def record_outcomes(
    uow: UnitOfWork, node_id: str, outcome: Outcome | EventType, times: int
) -> None:
    """Fold ``times`` identical outcomes at once (a batch of completions)."""
    if times:
        _fold(uow, node_id, Outcome(outcome), times)


def apply_health(uow: UnitOfWork, node_id: str, health: NodeHealth) -> None:
    """Fold a health change into the node's trust score."""
    _fold(uow, node_id, NodeHealth(health))


def release_probation(uow: UnitOfWork) -> int:
    """Let quarantined nodes that sat out their probation back in (a sweep step)."""
    released = 0
    for (node_id,) in uow.conn.execute(
        select(nodes.c.node_id).where(nodes.c.quarantined.is_(True))
    ).all():
        old = _load(uow, node_id)
        assert old is not None
        new, change = tick(old, uow.now_us / 1e6, PARAMS)
        if new != old:
            _store(uow, node_id, old, new, change)
            released += int(not new.quarantined)
    return released
