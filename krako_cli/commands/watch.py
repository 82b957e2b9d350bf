"""``krako watch``: a unit's or a session's events as they happen."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect, unit_exit
from krako_cli.follow import Tail
from krako_cli.render.events import event_line
from krako_cli.render.units import verdict
from shared.events import Event, EventType

#: events after which a watched unit may be terminal (the unit itself is then read to know)
ENDING_EVENTS = frozenset(
    {
        EventType.WORKUNIT_COMPLETED,
        EventType.WORKUNIT_FAILED,
        EventType.WORKUNIT_LEASE_EXPIRED,
        EventType.WORKUNIT_CANCELLED,
    }
)


def _show(event: Event, as_json: bool) -> None:
    if as_json:
        console.emit_jsonl(event.model_dump(mode="json"))
    else:
        console.out.print(event_line(event), soft_wrap=True)


def _in_session(event: Event, session: str) -> bool:
    return event.correlation_id == session or (event.payload.get("execution_session_id") == session)


def watch(
    ctx: typer.Context,
    unit_id: Annotated[
        str | None, typer.Argument(metavar="[UNIT]", help="Follow this work unit.")
    ] = None,
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="Follow every unit of this execution session."),
    ] = None,
    after: Annotated[
        int,
        typer.Option(
            "--after",
            min=0,
            help="--session: start after this seq (default: the beginning of the log).",
        ),
    ] = 0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Stop after this many seconds.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print a unit's or a session's events as they happen (JSONL with --json).

    A unit: its history, then live events until it is terminal; exit 0 when it completed,
    1 when it failed or was cancelled (or --timeout ran out first). A session: until Ctrl-C
    or --timeout (exit 0)."""
    if (unit_id is None) == (session is None):
        raise typer.BadParameter("give a UNIT or --session, not both")
    deadline = None if timeout is None else time.monotonic() + timeout
    with connect(ctx, as_json) as api:
        if session is not None:
            for event in Tail(api, after, deadline):
                if _in_session(event, session):
                    _show(event, as_json)
            return
        assert unit_id is not None
        # read the unit before its history: if it is terminal now, the history has it all
        unit = api.unit(unit_id)
        start = 0
        for event in api.unit_events(unit_id):
            start = max(start, event.seq)
            _show(event, as_json)
        if not unit.status.terminal:
            for event in Tail(api, start, deadline):
                if event.stream_id != unit_id:
                    continue
                _show(event, as_json)
                if event.type in ENDING_EVENTS:
                    unit = api.unit(unit_id)
                    if unit.status.terminal:
                        break
        if not as_json:
            note = "" if unit.status.terminal else " (timed out)"
            console.out.print(verdict(f"{unit.id}: {unit.status.value}{note}", unit))
    raise typer.Exit(unit_exit(unit))
