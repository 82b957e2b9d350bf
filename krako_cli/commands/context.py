"""What every command shares: the ``--json`` flag, the Api of this invocation, and how a
failure becomes an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from krako_cli import console
from krako_cli.client import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Api, CliError, Runtime
from shared.enums import WorkUnitStatus
from shared.wire import WorkUnit

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


@contextmanager
def connect(ctx: typer.Context, as_json: bool) -> Iterator[Api]:
    """The Api for this command; CliError and Ctrl-C become their exit codes."""
    rt = ctx.find_object(Runtime) or Runtime()
    api = Api(rt)
    try:
        yield api
    except CliError as exc:
        console.report(exc, as_json)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:
        console.err.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        api.close()


def unit_exit(unit: WorkUnit) -> int:
    """0 when the unit completed, 1 otherwise (failed, cancelled, or not terminal yet)."""
    return EXIT_OK if unit.status is WorkUnitStatus.COMPLETED else EXIT_FAILED
