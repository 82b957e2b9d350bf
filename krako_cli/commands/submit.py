"""``krako submit``: a work unit from flags, optionally waited for."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

import typer

from krako_cli import console
from krako_cli.commands.context import JsonFlag, connect, unit_exit
from krako_cli.follow import wait_for_unit
from krako_cli.render.units import unit_fields, where
from shared.enums import Priority, WorkUnitKind
from shared.wire import WorkUnit


def _parse_arg(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{raw!r} is not key=value", param_hint="--arg")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a bare word is a string


def build_payload(
    kind: WorkUnitKind,
    payload: str | None,
    handler: str | None,
    args: list[str],
    prompt: str | None,
    model: str | None,
) -> dict[str, Any]:
    """The unit's payload from --payload, or from --handler/--arg (cpu), --prompt (llm_pod)."""
    if payload is not None:
        if handler or args or prompt or model:
            raise typer.BadParameter(
                "--payload excludes --handler, --arg, --prompt and --model",
                param_hint="--payload",
            )
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--payload")
        if not isinstance(value, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--payload")
        return value
    extra = dict(_parse_arg(a) for a in args)
    if kind is WorkUnitKind.CPU:
        if not handler:
            raise typer.BadParameter(
                "a cpu unit needs --handler (noop, sleep, sha256, ...) or --payload",
                param_hint="--handler",
            )
        if prompt or model:
            raise typer.BadParameter("--prompt/--model are for llm_pod units")
        return {"handler": handler, "args": extra}
    if handler:
        raise typer.BadParameter("--handler is for cpu units", param_hint="--handler")
    if not prompt:
        raise typer.BadParameter(
            "an llm_pod unit needs --prompt or --payload", param_hint="--prompt"
        )
    body: dict[str, Any] = {"prompt": prompt, **extra}
    if model:
        body["model"] = model
    return body


def submit(
    ctx: typer.Context,
    kind: Annotated[WorkUnitKind, typer.Argument(help="cpu or llm_pod.")],
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="execution_session_id (default: a fresh cli-… id)."),
    ] = None,
    priority: Annotated[
        Priority, typer.Option("--priority", "-p", help="p0 (highest) … p9.")
    ] = Priority.P1,
    region: Annotated[
        str | None, typer.Option("--region", help="Run only in this region (default: anywhere).")
    ] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="The whole payload as a JSON object.")
    ] = None,
    handler: Annotated[
        str | None, typer.Option("--handler", help="cpu: the handler (noop, sleep, sha256, …).")
    ] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            "-a",
            help="key=value, repeatable: the handler's args (cpu) or payload fields (llm_pod). "
            "JSON values are parsed (ms=100 is a number), anything else is a string.",
        ),
    ] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="llm_pod: the prompt.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="llm_pod: the model.")] = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, max=100)] = 3,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Submitting again with the same key returns the same unit (and makes the "
            "submission safe to retry).",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the unit is terminal.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="With --wait: give up after this many seconds."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a work unit. With --wait, exit 0 when it completes and 1 when it fails, is
    cancelled or is still running at --timeout."""
    body = {
        "kind": kind.value,
        "execution_session_id": f"cli-{secrets.token_hex(4)}" if session is None else session,
        "priority": priority.value,
        "region": region,
        "payload": build_payload(kind, payload, handler, arg or [], prompt, model),
        "max_attempts": max_attempts,
    }
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with connect(ctx, as_json) as api:
        # only a submission with a key is safe to repeat: the key makes a retry a no-op
        response = api.send(
            "POST",
            "/v1/workunits",
            body=body,
            headers=headers,
            retry_s=10.0 if idempotency_key else 0.0,
        )
        data = response.json()
        unit = WorkUnit.model_validate(data)
        if not as_json:
            verb = "already submitted" if response.status_code == 200 else "submitted"
            console.out.print(
                f"{verb} {unit.id} ({unit.kind.value}, {unit.priority.value}, session "
                f"{unit.execution_session_id}): {unit.status.value}{where(unit)}"
            )
        if not wait:
            if as_json:
                console.emit_json(data)
            return
        if as_json:
            final = wait_for_unit(api, unit, timeout)
            console.emit_json(final.model_dump(mode="json"))
        else:
            with console.err.status(f"waiting for {unit.id}: {unit.status.value}") as spinner:
                final = wait_for_unit(
                    api,
                    unit,
                    timeout,
                    on_update=lambda u: spinner.update(
                        f"waiting for {u.id}: {u.status.value}{where(u)}"
                    ),
                )
            console.out.print(unit_fields(final))
            if not final.status.terminal:
                console.err.print(f"{final.id} is still {final.status.value} after {timeout} s")
    raise typer.Exit(unit_exit(final))
