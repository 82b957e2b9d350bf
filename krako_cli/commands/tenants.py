"""``krako tenants create`` and ``krako tenants me``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect
from krako_cli.render.text import fields


def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The tenant's name.")],
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant (admin) and print its API key (shown this once)."""
    with connect(ctx, as_json) as api:
        data = api.post("/v1/tenants", {"name": name})
    if as_json:
        console.emit_json(data)
        return
    console.out.print(
        fields(
            [
                ("tenant_id", str(data["tenant_id"])),
                ("name", str(data["name"])),
                ("api_key", Text(str(data["api_key"]), style="bold")),
            ]
        )
    )
    console.err.print("keep the API key: it is not shown again")


def me(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The tenant of the token in use."""
    with connect(ctx, as_json) as api:
        data = api.get("/v1/tenants/me")
    if as_json:
        console.emit_json(data)
        return
    console.out.print(f"{data['tenant_id']} ({data['name']})")
