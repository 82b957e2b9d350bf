"""Where the commands write: ``out`` (stdout) and ``err`` (stderr), and ``--json`` output.

The consoles are rebuilt by ``bind()`` at the start of each invocation, so that a test
runner's streams, and whether they are a terminal, are the ones in force; modules refer to
them as ``console.out`` / ``console.err`` to see the current ones."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from krako_cli.client import CliError

#: width of tables when the stream is not a terminal (a pipe, a file): wide, so nothing is cut
PIPE_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    """A console on the current stdout/stderr (file=None: rich resolves them at each write,
    so test runners capture them); piped output is wide rather than cut at 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, highlight=False, width=PIPE_WIDTH if piped else None)


out = _console()
err = _console(stderr=True)


def bind() -> None:
    """Rebuild ``out`` and ``err`` for this invocation's streams."""
    global out, err
    out, err = _console(), _console(stderr=True)


def emit_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (``--json``)."""
    typer.echo(json.dumps(value, indent=2, default=str))


def emit_jsonl(value: Any) -> None:
    """``value`` as one compact JSON line with sorted keys on stdout (JSONL streams)."""
    typer.echo(json.dumps(value, separators=(",", ":"), sort_keys=True, default=str))


def report(exc: CliError, as_json: bool) -> None:
    """The error on stderr, and with ``--json`` its problem document on stdout."""
    if as_json and exc.problem is not None:
        typer.echo(json.dumps(exc.problem, indent=2))
    err.print(Text("error: ", style="bold red") + Text(exc.message))
