"""``krako``: the command line for people (and scripts) talking to a Krako control plane.

The CLI is an HTTP client of the public API (API.md) and nothing more: it never touches the
database, only ``shared/`` wire models and httpx. Every command takes ``--json`` for scripts;
errors come back from the control plane as problem details and are printed as
``error: <title> (<code>): <detail>`` on stderr (and, with ``--json``, as the problem document
on stdout).

Exit codes (also in ``krako --help``)::

    0    ok
    1    failed: the unit failed or was cancelled, replay not identical, a refusal (409, 429, ...)
    2    usage error: bad flags, or input the control plane refused as invalid (400, 413, 422)
    3    not found (404)
    4    auth error: no token, an unknown token (401) or the wrong role (403)
    5    control plane unreachable (connection refused, timeout, 5xx)
    130  interrupted (Ctrl-C)

This module builds the typer app from the commands (``krako_cli/commands/``); the HTTP client
is ``krako_cli/client.py``, what the commands show is ``krako_cli/render/``. Tests build the
CLI with a transport of their choice: ``runner.invoke(app, args,
obj=Runtime(transport=httpx.MockTransport(...)))``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Annotated, NoReturn

import typer

from krako_cli import console
from krako_cli.client import DEFAULT_URL, EXIT_OK, Runtime
from krako_cli.commands import billing, capacity, explain, nodes, submit, tenants, units, watch

EXIT_CODES_HELP = """\
**Exit codes**

* 0 ok
* 1 failed: the unit failed or was cancelled, replay not identical, a refusal (409, 429, ...)
* 2 usage error: bad flags, or input refused as invalid (400, 413, 422)
* 3 not found (404)
* 4 auth error: no or an unknown token (401), the wrong role (403)
* 5 control plane unreachable: connection refused, timeout, 5xx
* 130 interrupted (Ctrl-C)
"""

app = typer.Typer(
    name="krako",
    help="Krako: submit work, follow it, inspect nodes, capacity and billing.\n\n"
    "Talks to the control plane over HTTP; --url (KRAKO_URL) and --token (KRAKO_TOKEN, an "
    "admin token or a tenant API key) say where and who. Every command takes --json.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would show the token
    rich_markup_mode="markdown",
)


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Option("--url", envvar="KRAKO_URL", help="Base URL of the control plane."),
    ] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="KRAKO_TOKEN",
            help="Bearer token: the admin token or a tenant API key.",
            show_default=False,
        ),
    ] = None,
) -> None:
    console.bind()  # to this invocation's streams
    base = ctx.obj if isinstance(ctx.obj, Runtime) else Runtime()
    ctx.obj = replace(base, url=url.rstrip("/"), token=token or None)


# the order of registration is the order of ``krako --help``
for name, command in (
    ("submit", submit.submit),
    ("status", units.status),
    ("cancel", units.cancel),
    ("watch", watch.watch),
    ("explain", explain.explain),
    ("nodes", nodes.nodes),
    ("wallet", billing.wallet),
    ("replay", billing.replay),
):
    app.command(name, epilog=EXIT_CODES_HELP)(command)

ledger_app = typer.Typer(help="The billing ledger.", no_args_is_help=True)
ledger_app.command("export", epilog=EXIT_CODES_HELP)(billing.ledger_export)

capacity_app = typer.Typer(
    help="Capacity and the admission mode; 'set' and 'clear' manage a manual override.",
    invoke_without_command=True,
)
capacity_app.callback(epilog=EXIT_CODES_HELP)(capacity.show)
capacity_app.command("set", epilog=EXIT_CODES_HELP)(capacity.set_mode)
capacity_app.command("clear", epilog=EXIT_CODES_HELP)(capacity.clear)

tenants_app = typer.Typer(
    help="Tenants (creating one needs the admin token).", no_args_is_help=True
)
tenants_app.command("create", epilog=EXIT_CODES_HELP)(tenants.create)
tenants_app.command("me", epilog=EXIT_CODES_HELP)(tenants.me)

app.add_typer(ledger_app, name="ledger")
app.add_typer(capacity_app, name="capacity")
app.add_typer(tenants_app, name="tenants")


def main() -> NoReturn:
    """The ``krako`` console script."""
    app(prog_name="krako")
    sys.exit(EXIT_OK)  # app() exits itself; this satisfies NoReturn
