"""``krako ledger export``, ``krako wallet`` and ``krako replay``: the bill."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from krako_cli import console
from krako_cli.client import EXIT_FAILED
from krako_cli.commands.context import JsonFlag, connect
from krako_cli.render.billing import replay_fields, wallet_fields
from shared.wire import ReplayReport, Wallet

NDJSON = "application/x-ndjson"
LEDGER = "/v1/billing/ledger"


def ledger_export(
    ctx: typer.Context,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Admin: only this tenant's lines.")
    ] = None,
    after: Annotated[
        int, typer.Option("--after", min=0, help="Only lines from events after this seq.")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Accepted for uniformity: the output is JSONL.")
    ] = False,
) -> None:
    """Every ledger line as JSONL on stdout (a tenant gets its own; the admin all)."""
    params = {"after": after, "tenant_id": tenant}
    with connect(ctx, as_json) as api:
        response = api.send(
            "GET",
            LEDGER,
            params=params,
            headers={"Accept": NDJSON},
            read_timeout=300.0,
            stream=True,
        )
        try:
            if response.headers.get("content-type", "").startswith(NDJSON):
                for line in response.iter_lines():
                    if line.strip():
                        typer.echo(line)
                return
            page = json.loads(response.read())
        finally:
            response.close()
        # the server answered with a JSON page instead: print it, then follow its cursor
        for entry in page.get("entries", []):
            console.emit_jsonl(entry)
        cursor = page.get("next_cursor")
        if cursor:
            for entry in api.pages(LEDGER, params, key="entries", cursor=cursor):
                console.emit_jsonl(entry)


def wallet(
    ctx: typer.Context,
    tenant_id: Annotated[
        str | None,
        typer.Argument(metavar="[TENANT]", help="The tenant (default: the token's own tenant)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A tenant's spend by line-item type and in all, and the seq it is current to."""
    with connect(ctx, as_json) as api:
        if tenant_id is None:
            tenant_id = str(api.get("/v1/tenants/me")["tenant_id"])
        data = api.get(f"/v1/billing/wallets/{tenant_id}")
    if as_json:
        console.emit_json(data)
        return
    console.out.print(wallet_fields(Wallet.model_validate(data)))


def replay(
    ctx: typer.Context,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Exit 1 unless the replay is identical to the live state."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild the ledger and wallets from the event log and compare digests (admin)."""
    with connect(ctx, as_json) as api:
        data = api.post("/v1/billing/replay", read_timeout=600.0)
    report = ReplayReport.model_validate(data)
    if as_json:
        console.emit_json(data)
    else:
        console.out.print(replay_fields(report))
    if verify and not report.identical:
        raise typer.Exit(EXIT_FAILED)
