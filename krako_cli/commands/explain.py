"""``krako explain``: why a unit went where it went, from its events."""

from __future__ import annotations

from typing import Annotated

import typer

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect
from krako_cli.render.placements import Placement, explanation
from krako_cli.render.units import verdict, where
from shared.events import Event, EventType

NOT_PLACED = (
    "not placed yet: it waits in the queue until a node is eligible (kind, region, "
    "health, trust, free slots) and admission lets its priority through "
    "(see 'krako capacity')."
)


def placements(events: list[Event]) -> list[tuple[Placement, list[Event]]]:
    """Each placement of a unit and the events that followed it, up to the next one."""
    found: list[tuple[Placement, list[Event]]] = []
    for event in events:
        if event.type == EventType.WORKUNIT_SCHEDULED:
            found.append((Placement.of(event), []))
        elif found and event.type != EventType.WORKUNIT_LEASES_RENEWED:
            found[-1][1].append(event)
    return found


def explain(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(metavar="UNIT", help="The work unit id.")],
    as_json: JsonFlag = False,
) -> None:
    """Why a unit went where it went: each placement's chosen node, the candidates with their
    scores and components, and the nodes excluded with their reasons (from the log)."""
    with connect(ctx, as_json) as api:
        unit = api.unit(unit_id)
        found = placements(api.unit_events(unit_id))
    if as_json:
        console.emit_json(
            {
                "unit_id": unit.id,
                "status": unit.status.value,
                "node_id": unit.node_id,
                "placements": [
                    {
                        "seq": p.event.seq,
                        "recorded_at": p.event.recorded_at.isoformat(),
                        "attempt": p.attempt,
                        "node_id": p.node_id,
                        "offered_to": p.event.payload.get("offered_to", []),
                        "decision": p.decision,
                        "then": [
                            {"seq": x.seq, "type": x.type, "payload": x.payload} for x in later
                        ],
                    }
                    for p, later in found
                ],
            }
        )
        return
    console.out.print(verdict(f"{unit.id}: {unit.status.value}{where(unit)}", unit))
    if not found:
        console.out.print(NOT_PLACED)
        return
    for placement, later in found:
        console.out.print()
        for part in explanation(placement, later):
            console.out.print(part)
