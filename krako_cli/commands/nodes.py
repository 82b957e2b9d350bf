"""``krako nodes``: the node registry."""

from __future__ import annotations

import typer

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect
from krako_cli.render.nodes import nodes_table
from shared.wire import Node


def nodes(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The node registry (admin)."""
    with connect(ctx, as_json) as api:
        items = list(api.pages("/v1/nodes"))
    if as_json:
        console.emit_json(items)
        return
    console.out.print(nodes_table([Node.model_validate(raw) for raw in items]))
