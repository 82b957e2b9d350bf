"""``krako status`` and ``krako cancel``: one work unit."""

from __future__ import annotations

from typing import Annotated

import typer

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect
from krako_cli.render.units import unit_fields
from shared.wire import WorkUnit

UnitArg = Annotated[str, typer.Argument(metavar="UNIT", help="The work unit id.")]


def status(ctx: typer.Context, unit_id: UnitArg, as_json: JsonFlag = False) -> None:
    """Show a work unit (exit 0 whatever its status; 3 when there is no such unit)."""
    with connect(ctx, as_json) as api:
        data = api.get(f"/v1/workunits/{unit_id}")
    if as_json:
        console.emit_json(data)
        return
    console.out.print(unit_fields(WorkUnit.model_validate(data)))


def cancel(ctx: typer.Context, unit_id: UnitArg, as_json: JsonFlag = False) -> None:
    """Cancel a work unit that is not terminal yet (1 when it already is: 409)."""
    with connect(ctx, as_json) as api:
        data = api.post(f"/v1/workunits/{unit_id}/cancel")
    if as_json:
        console.emit_json(data)
        return
    unit = WorkUnit.model_validate(data)
    console.out.print(f"{unit.id}: {unit.status.value}")
