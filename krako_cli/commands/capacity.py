"""``krako capacity`` (show), ``capacity set`` and ``capacity clear`` (a manual override)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect
from krako_cli.render.capacity import capacity_fields
from shared.enums import CapacityMode
from shared.wire import CapacityReport


def _show(data: Any, as_json: bool) -> None:
    if as_json:
        console.emit_json(data)
    else:
        console.out.print(capacity_fields(CapacityReport.model_validate(data)))


def show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the admission mode, nodes, queue depth by priority and the last decision."""
    if ctx.invoked_subcommand is not None:
        return
    with connect(ctx, as_json) as api:
        data = api.get("/v1/capacity")
    _show(data, as_json)


def set_mode(
    ctx: typer.Context,
    mode: Annotated[
        CapacityMode,
        typer.Argument(help="OPEN, THROTTLED or CRITICAL.", case_sensitive=False),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the event).")],
    ttl: Annotated[
        float | None,
        typer.Option("--ttl", min=0, help="Seconds the override holds (default: until cleared)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Override the admission mode (admin); the autoscaler leaves it alone while it holds."""
    body = {"mode": mode.value, "reason": reason, "ttl_s": ttl}
    with connect(ctx, as_json) as api:
        data = api.send("PUT", "/v1/capacity/mode", body=body).json()
    _show(data, as_json)


def clear(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """End a manual override (admin); the autoscaler decides at its next tick."""
    with connect(ctx, as_json) as api:
        api.send("DELETE", "/v1/capacity/mode")
    if as_json:
        console.emit_json({"cleared": True})
    else:
        console.out.print("override cleared; the autoscaler decides the mode at its next tick")
