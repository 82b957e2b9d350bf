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

Tests build the CLI with a transport of their choice: ``runner.invoke(app, args,
obj=Runtime(transport=httpx.MockTransport(...)))``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.enums import CapacityMode, Priority, WorkUnitKind, WorkUnitStatus
from shared.events import Event
from shared.wire import CapacityReport, Node, ReplayReport, Wallet, WorkUnit

DEFAULT_URL = "http://127.0.0.1:8080"
NDJSON = "application/x-ndjson"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130

#: the longest hold the control plane grants a long-poll (API.md: wait_s 0-30)
LONG_POLL_S = 20.0
#: how long loops that only read (--wait, watch) ride out an outage or a replica restart
READ_RETRY_S = 30.0

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
ledger_app = typer.Typer(help="The billing ledger.", no_args_is_help=True)
capacity_app = typer.Typer(
    help="Capacity and the admission mode; 'set' and 'clear' manage a manual override.",
    invoke_without_command=True,
)
tenants_app = typer.Typer(
    help="Tenants (creating one needs the admin token).", no_args_is_help=True
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(capacity_app, name="capacity")
app.add_typer(tenants_app, name="tenants")

#: width of tables when stdout is not a terminal (a pipe, a file): wide, so nothing is cut
PIPE_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    """A console on the current stdout/stderr (file=None: rich resolves them at each write,
    so test runners capture them); piped output is wide rather than cut at 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, highlight=False, width=PIPE_WIDTH if piped else None)


out = _console()
err = _console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


# --------------------------------------------------------------------------- errors


class CliError(Exception):
    """A failure that ends the command with ``exit_code`` (one of the EXIT_* codes)."""

    def __init__(
        self, message: str, exit_code: int, problem: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.problem = problem


def _exit_code_for(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (400, 413, 422):
        return EXIT_USAGE
    if status >= 500:
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def problem_error(response: httpx.Response) -> CliError:
    """The CliError for a non-2xx reply: its problem details, or what the body says."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    title = str(problem.get("title") or response.reason_phrase or f"HTTP {status}")
    code = problem.get("code")
    detail = problem.get("detail")
    if detail is None and not problem:
        detail = response.text.strip()[:300] or None
    message = f"{title} ({code})" if code else f"{title} (HTTP {status})"
    if detail:
        message += f": {detail}"
    for item in problem.get("errors") or []:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", []))
            message += f"\n  - {loc}: {item.get('msg')}"
    if status == 401:
        message += "\n  (pass --token or set KRAKO_TOKEN: the admin token or a tenant API key)"
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        message += f"\n  (retry after {retry_after} s)"
    if not problem:
        problem = {"title": title, "status": status, "detail": detail, "code": code}
    return CliError(message, _exit_code_for(status), problem)


def _report(exc: CliError, as_json: bool) -> None:
    if as_json and exc.problem is not None:
        typer.echo(json.dumps(exc.problem, indent=2))
    err.print(Text("error: ", style="bold red") + Text(exc.message))


# --------------------------------------------------------------------------- the HTTP client


@dataclass(frozen=True)
class Runtime:
    """Where and who: filled by the global options. ``transport`` replaces the network."""

    url: str = DEFAULT_URL
    token: str | None = None
    transport: httpx.BaseTransport | None = None


class Api:
    """The control plane over HTTP: one client, problem details turned into CliError.

    Only reads (and submissions carrying an Idempotency-Key) are retried, and only when the
    caller gives a retry budget: they are the operations that are safe to repeat.
    """

    def __init__(self, rt: Runtime) -> None:
        headers = {"User-Agent": "krako-cli"}
        if rt.token:
            headers["Authorization"] = f"Bearer {rt.token}"
        self.url = rt.url
        self._client = httpx.Client(
            base_url=rt.url,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=rt.transport,
        )

    def close(self) -> None:
        self._client.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float = 30.0,
        retry_s: float = 0.0,
        stream: bool = False,
    ) -> httpx.Response:
        """One request; a 2xx reply, or CliError. ``stream``: the body is not read yet."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(read_timeout, connect=5.0)
        deadline = time.monotonic() + retry_s
        delay = 0.2
        while True:
            request = self._client.build_request(
                method, path, params=clean, json=body, headers=headers, timeout=timeout
            )
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if time.monotonic() + delay < deadline:
                    delay = _pause(delay)
                    continue
                raise CliError(
                    f"cannot reach the control plane at {self.url}: {exc or type(exc).__name__}",
                    EXIT_UNREACHABLE,
                    {"title": "Unreachable", "detail": str(exc), "code": "unreachable"},
                ) from exc
            if response.status_code in (502, 503, 504) and time.monotonic() + delay < deadline:
                response.close()
                delay = _pause(delay)
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise problem_error(response)
            return response

    def get(self, path: str, **kw: Any) -> Any:
        return self.send("GET", path, **kw).json()

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.send("POST", path, body=body, **kw).json()


def _pause(delay: float) -> float:
    """Sleep a jittered ``delay``; the next one (exponential, capped at 5 s)."""
    time.sleep(delay * random.uniform(0.5, 1.0))
    return min(delay * 2, 5.0)


@contextmanager
def connect(ctx: typer.Context, as_json: bool) -> Iterator[Api]:
    """The Api for this command; CliError and Ctrl-C become their exit codes."""
    rt = ctx.find_object(Runtime) or Runtime()
    api = Api(rt)
    try:
        yield api
    except CliError as exc:
        _report(exc, as_json)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        api.close()


# --------------------------------------------------------------------------- output helpers


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def emit_jsonl(value: Any) -> None:
    typer.echo(json.dumps(value, separators=(",", ":"), sort_keys=True, default=str))


def _compact(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


STATUS_STYLE = {
    WorkUnitStatus.QUEUED: "yellow",
    WorkUnitStatus.SCHEDULED: "cyan",
    WorkUnitStatus.CLAIMED: "blue",
    WorkUnitStatus.COMPLETED: "green",
    WorkUnitStatus.FAILED: "red",
    WorkUnitStatus.CANCELLED: "magenta",
}
MODE_STYLE = {
    CapacityMode.OPEN: "green",
    CapacityMode.THROTTLED: "yellow",
    CapacityMode.CRITICAL: "bold red",
}


def _fields(rows: list[tuple[str, str | Text]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _unit_rows(unit: WorkUnit) -> list[tuple[str, str | Text]]:
    return [
        ("id", unit.id),
        ("status", Text(unit.status.value, style=STATUS_STYLE[unit.status])),
        ("kind", unit.kind.value),
        ("session", unit.execution_session_id),
        ("priority", unit.priority.value),
        ("region", unit.region or "(any)"),
        ("attempt", f"{unit.attempt} of {unit.max_attempts}"),
        ("node", unit.node_id or "-"),
        ("tenant", unit.tenant_id),
        ("created", unit.created_at.isoformat()),
        ("updated", unit.updated_at.isoformat()),
        ("payload", _compact(unit.payload)),
        ("result", _compact(unit.result) if unit.result is not None else "-"),
        ("error", _compact(unit.error) if unit.error is not None else "-"),
    ]


def _unit_exit(unit: WorkUnit) -> int:
    return EXIT_OK if unit.status is WorkUnitStatus.COMPLETED else EXIT_FAILED


# --------------------------------------------------------------------------- root options


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
    global out, err
    out, err = _console(), _console(stderr=True)  # bound to this invocation's streams
    base = ctx.obj if isinstance(ctx.obj, Runtime) else Runtime()
    ctx.obj = replace(base, url=url.rstrip("/"), token=token or None)


# --------------------------------------------------------------------------- submit


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


def wait_for_unit(api: Api, unit: WorkUnit, timeout: float | None, spinner: bool) -> WorkUnit:
    """Long-poll the unit until it is terminal (or ``timeout`` runs out)."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def step(current: WorkUnit) -> WorkUnit:
        hold = LONG_POLL_S
        if deadline is not None:
            hold = max(0.0, min(hold, deadline - time.monotonic()))
        data = api.get(
            f"/v1/workunits/{current.id}",
            params={"wait_s": round(hold, 3)},
            read_timeout=hold + 15.0,
            retry_s=READ_RETRY_S,
        )
        return WorkUnit.model_validate(data)

    def running(current: WorkUnit) -> bool:
        if current.status.terminal:
            return False
        return deadline is None or time.monotonic() < deadline

    if not spinner:
        while running(unit):
            unit = step(unit)
        return unit
    with err.status(f"waiting for {unit.id}: {unit.status.value}") as status:
        while running(unit):
            unit = step(unit)
            where = f" on {unit.node_id}" if unit.node_id else ""
            status.update(f"waiting for {unit.id}: {unit.status.value}{where}")
    return unit


@app.command(epilog=EXIT_CODES_HELP)
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
            where = f" on {unit.node_id}" if unit.node_id else ""
            out.print(
                f"{verb} {unit.id} ({unit.kind.value}, {unit.priority.value}, session "
                f"{unit.execution_session_id}): {unit.status.value}{where}"
            )
        if not wait:
            if as_json:
                emit_json(data)
            return
        final = wait_for_unit(api, unit, timeout, spinner=not as_json)
        if as_json:
            emit_json(final.model_dump(mode="json"))
        else:
            out.print(_fields(_unit_rows(final)))
            if not final.status.terminal:
                err.print(f"{final.id} is still {final.status.value} after {timeout} s")
    raise typer.Exit(_unit_exit(final))


# --------------------------------------------------------------------------- status, cancel


@app.command(epilog=EXIT_CODES_HELP)
def status(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(metavar="UNIT", help="The work unit id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a work unit (exit 0 whatever its status; 3 when there is no such unit)."""
    with connect(ctx, as_json) as api:
        data = api.get(f"/v1/workunits/{unit_id}")
    if as_json:
        emit_json(data)
        return
    out.print(_fields(_unit_rows(WorkUnit.model_validate(data))))


@app.command(epilog=EXIT_CODES_HELP)
def cancel(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(metavar="UNIT", help="The work unit id.")],
    as_json: JsonFlag = False,
) -> None:
    """Cancel a work unit that is not terminal yet (1 when it already is: 409)."""
    with connect(ctx, as_json) as api:
        data = api.post(f"/v1/workunits/{unit_id}/cancel")
    if as_json:
        emit_json(data)
        return
    unit = WorkUnit.model_validate(data)
    out.print(f"{unit.id}: {unit.status.value}")


# --------------------------------------------------------------------------- watch


def _p(event: Event, key: str, default: Any = None) -> Any:
    return event.payload.get(key, default)


def _on_node(event: Event) -> str:
    node = _p(event, "node_id")
    return f"on {node}" if node else ""


def _scheduled(event: Event) -> str:
    offered = ", ".join(_p(event, "offered_to", []) or [])
    text = f"on {_p(event, 'node_id')} (attempt {_p(event, 'attempt')}, offered to {offered})"
    rule = (_p(event, "decision") or {}).get("rule")
    return f"{text}: {rule}" if rule else text


def _claimed(event: Event) -> str:
    return (
        f"by {_p(event, 'node_id')} (attempt {_p(event, 'attempt')}, lease until "
        f"{_p(event, 'lease_expires_at')})"
    )


def _completed(event: Event) -> str:
    return (
        f"on {_p(event, 'node_id')} (attempt {_p(event, 'attempt')}, {_p(event, 'cpu_ms')} ms cpu)"
    )


def _failed(event: Event) -> str:
    then = "requeued" if _p(event, "requeued") else "final"
    error = _compact(_p(event, "error"), 120)
    return f"attempt {_p(event, 'attempt')} {_on_node(event)}, {then}: {error}"


def _lease_expired(event: Event) -> str:
    then = "requeued" if _p(event, "requeued") else "final"
    return f"{_p(event, 'node_id')} lost attempt {_p(event, 'attempt')}, {then}"


def _invocation(event: Event) -> str:
    stale = " (stale claim: platform cost)" if _p(event, "stale_claim") else ""
    return (
        f"{_p(event, 'provider')}/{_p(event, 'model')} {_p(event, 'tokens_in')}+"
        f"{_p(event, 'tokens_out')} tokens, {_p(event, 'latency_ms')} ms{stale}"
    )


def _submitted(event: Event) -> str:
    return (
        f"{_p(event, 'kind')} {_p(event, 'priority')} session {_p(event, 'execution_session_id')}"
    )


def _mode_changed(event: Event) -> str:
    return (
        f"{_p(event, 'from')} -> {_p(event, 'to')} ({_p(event, 'source')}): {_p(event, 'reason')}"
    )


def _unscheduled(event: Event) -> str:
    return f"offer to {_p(event, 'node_id')} withdrawn: {_p(event, 'reason')}"


def _cancelled(event: Event) -> str:
    return f"by {_p(event, 'by')}"


#: one line of explanation per event type; others print their payload, compacted
SUMMARIES: dict[str, Callable[[Event], str]] = {
    "workunit.submitted": _submitted,
    "workunit.scheduled": _scheduled,
    "workunit.unscheduled": _unscheduled,
    "workunit.claimed": _claimed,
    "workunit.completed": _completed,
    "workunit.failed": _failed,
    "workunit.lease_expired": _lease_expired,
    "workunit.cancelled": _cancelled,
    "llm.invocation.completed": _invocation,
    "capacity.admission.mode.changed": _mode_changed,
}

#: events after which a watched unit may be terminal (the unit itself is then read to know)
ENDING_EVENTS = frozenset(
    {"workunit.completed", "workunit.failed", "workunit.lease_expired", "workunit.cancelled"}
)


def summarize(event: Event) -> str:
    """One line about the event: its type's summary, or its payload compacted."""
    summary = SUMMARIES.get(event.type)
    return summary(event) if summary is not None else _compact(event.payload, 160)


def print_event(event: Event, as_json: bool) -> None:
    if as_json:
        emit_jsonl(event.model_dump(mode="json"))
        return
    summary = summarize(event)
    line = Text()
    line.append(f"#{event.seq:<6} ", style="dim")
    line.append(event.recorded_at.strftime("%H:%M:%S.%f")[:-3] + " ", style="dim")
    line.append(f"{event.type:<26} ", style="bold")
    line.append(f"{event.stream_id} ", style="cyan")
    line.append(summary)
    out.print(line, soft_wrap=True)


class Tail:
    """GET /v1/events from ``after`` on, long-polling; yields each event once, in order."""

    def __init__(self, api: Api, after: int, deadline: float | None) -> None:
        self.api = api
        self.after = after
        self.deadline = deadline

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def __iter__(self) -> Iterator[Event]:
        while not self.expired():
            hold = LONG_POLL_S
            if self.deadline is not None:
                hold = max(0.0, min(hold, self.deadline - time.monotonic()))
            page = self.api.get(
                "/v1/events",
                params={"after": self.after, "limit": 1000, "wait_s": round(hold, 3)},
                read_timeout=hold + 15.0,
                retry_s=READ_RETRY_S,
            )
            for raw in page.get("events", []):
                event = Event.model_validate(raw)
                self.after = max(self.after, event.seq)
                yield event
            self.after = max(self.after, int(page.get("last_seq", self.after)))


@app.command(epilog=EXIT_CODES_HELP)
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
                in_session = event.correlation_id == session or (
                    event.payload.get("execution_session_id") == session
                )
                if in_session:
                    print_event(event, as_json)
            return
        assert unit_id is not None
        # read the unit before its history: if it is terminal now, the history has it all
        unit = WorkUnit.model_validate(api.get(f"/v1/workunits/{unit_id}"))
        history = api.get(f"/v1/workunits/{unit_id}/events").get("events", [])
        start = 0
        for raw in history:
            event = Event.model_validate(raw)
            start = max(start, event.seq)
            print_event(event, as_json)
        if not unit.status.terminal:
            for event in Tail(api, start, deadline):
                if event.stream_id != unit_id:
                    continue
                print_event(event, as_json)
                if event.type in ENDING_EVENTS:
                    unit = WorkUnit.model_validate(api.get(f"/v1/workunits/{unit_id}"))
                    if unit.status.terminal:
                        break
        if not as_json:
            style = STATUS_STYLE[unit.status]
            note = "" if unit.status.terminal else " (timed out)"
            out.print(Text(f"{unit.id}: {unit.status.value}{note}", style=style))
    raise typer.Exit(_unit_exit(unit))


# --------------------------------------------------------------------------- explain


def _candidates_table(decision: Mapping[str, Any], offered: list[str]) -> Table:
    chosen = decision.get("chosen")
    weights = decision.get("weights") or {}
    table = Table(title="candidates (best first)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("node")
    table.add_column("score", justify="right")
    for name in ("free_capacity", "load", "trust", "region_match"):
        w = weights.get(name)
        table.add_column(f"{name}" + (f" ×{w}" if w is not None else ""), justify="right")
    table.add_column("free slots", justify="right")
    table.add_column("")
    for rank, cand in enumerate(decision.get("candidates") or [], start=1):
        comps = cand.get("components") or {}
        node = str(cand.get("node_id"))
        marks = []
        if node == chosen:
            marks.append("chosen")
        elif node in offered:
            marks.append("offered")
        table.add_row(
            str(rank),
            Text(node, style="bold green" if node == chosen else ""),
            f"{cand.get('score')}",
            *(f"{comps.get(n, '-')}" for n in ("free_capacity", "load", "trust", "region_match")),
            f"{cand.get('free_slots', '-')}",
            ", ".join(marks),
        )
    return table


def _explain_placement(event: Event, later: list[Event]) -> None:
    decision: Mapping[str, Any] = _p(event, "decision") or {}
    offered = [str(n) for n in _p(event, "offered_to", []) or []]
    chosen = _p(event, "node_id")
    head = Text()
    head.append(f"attempt {_p(event, 'attempt')}", style="bold")
    head.append(f": placed on {chosen} at {event.recorded_at.isoformat()} (event #{event.seq})")
    out.print(head)
    rule = decision.get("rule")
    if rule:
        out.print(f"  why: {rule}")
    eligible = decision.get("eligible")
    if eligible is not None:
        out.print(f"  eligible nodes: {eligible}; offered to: {', '.join(offered) or '-'}")
    weights = decision.get("weights") or {}
    terms = [
        f"{weights[n]}×{n}"
        for n in ("free_capacity", "load", "trust", "region_match")
        if n in weights
    ]
    if terms:
        out.print("  score = " + " + ".join(terms))
    streak = decision.get("streak")
    if streak:
        out.print(f"  anti-affinity: {_compact(streak)}")
    if decision.get("candidates"):
        out.print(_candidates_table(decision, offered))
    excluded = decision.get("excluded") or []
    counts: Mapping[str, int] = decision.get("excluded_counts") or {}
    total = int(decision.get("excluded_total") or len(excluded))
    if excluded or total:
        table = Table(title=f"excluded ({total})", title_justify="left")
        table.add_column("node")
        table.add_column("reason")
        for item in excluded:
            table.add_row(str(item.get("node_id")), str(item.get("reason")))
        out.print(table)
        if total > len(excluded) and counts:
            out.print("  by reason: " + ", ".join(f"{r} ×{n}" for r, n in sorted(counts.items())))
    if later:
        out.print("  then: " + "; ".join(f"{e.type} {summarize(e)}".rstrip() for e in later))


@app.command(epilog=EXIT_CODES_HELP)
def explain(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(metavar="UNIT", help="The work unit id.")],
    as_json: JsonFlag = False,
) -> None:
    """Why a unit went where it went: each placement's chosen node, the candidates with their
    scores and components, and the nodes excluded with their reasons (from the log)."""
    with connect(ctx, as_json) as api:
        unit = WorkUnit.model_validate(api.get(f"/v1/workunits/{unit_id}"))
        events = [
            Event.model_validate(raw)
            for raw in api.get(f"/v1/workunits/{unit_id}/events").get("events", [])
        ]
    # each placement and what followed it, up to the next placement
    placements: list[tuple[Event, list[Event]]] = []
    for event in events:
        if event.type == "workunit.scheduled":
            placements.append((event, []))
        elif placements and event.type != "workunit.leases.renewed":
            placements[-1][1].append(event)
    if as_json:
        emit_json(
            {
                "unit_id": unit.id,
                "status": unit.status.value,
                "node_id": unit.node_id,
                "placements": [
                    {
                        "seq": e.seq,
                        "recorded_at": e.recorded_at.isoformat(),
                        "attempt": _p(e, "attempt"),
                        "node_id": _p(e, "node_id"),
                        "offered_to": _p(e, "offered_to", []),
                        "decision": _p(e, "decision") or {},
                        "then": [
                            {"seq": x.seq, "type": x.type, "payload": x.payload} for x in later
                        ],
                    }
                    for e, later in placements
                ],
            }
        )
        return
    where = f" on {unit.node_id}" if unit.node_id else ""
    out.print(Text(f"{unit.id}: {unit.status.value}{where}", style=STATUS_STYLE[unit.status]))
    if not placements:
        out.print(
            "not placed yet: it waits in the queue until a node is eligible (kind, region, "
            "health, trust, free slots) and admission lets its priority through "
            "(see 'krako capacity')."
        )
        return
    for event, later in placements:
        out.print()
        _explain_placement(event, later)


# --------------------------------------------------------------------------- nodes


def _pages(api: Api, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Every item of a paginated list, following next_cursor."""
    cursor: str | None = None
    while True:
        page = api.get(path, params={**(params or {}), "limit": 1000, "cursor": cursor})
        yield from page.get("items", [])
        cursor = page.get("next_cursor")
        if not cursor:
            return


HEALTH_STYLE = {"healthy": "green", "suspect": "yellow", "unhealthy": "red"}


@app.command(epilog=EXIT_CODES_HELP)
def nodes(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The node registry (admin)."""
    with connect(ctx, as_json) as api:
        items = list(_pages(api, "/v1/nodes"))
    if as_json:
        emit_json(items)
        return
    table = Table(title=f"{len(items)} node(s)", title_justify="left")
    for col in ("node", "region", "kinds", "running", "health", "trust", "state", "heartbeat"):
        table.add_column(col, justify="right" if col in ("running", "trust") else "left")
    for raw in items:
        node = Node.model_validate(raw)
        state = ", ".join(
            s for s, on in (("drained", node.drained), ("quarantined", node.quarantined)) if on
        )
        table.add_row(
            node.node_id,
            node.region or "-",
            ",".join(k.value for k in node.supported_kinds),
            f"{node.running}/{node.max_concurrency}",
            Text(node.health.value, style=HEALTH_STYLE.get(node.health.value, "")),
            f"{node.trust:.2f}",
            state or "active",
            node.last_heartbeat_at.isoformat() if node.last_heartbeat_at else "never",
        )
    out.print(table)


# --------------------------------------------------------------------------- billing


@ledger_app.command("export", epilog=EXIT_CODES_HELP)
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
            "/v1/billing/ledger",
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
        # a JSON page: follow the cursor
        while True:
            for entry in page.get("entries", []):
                emit_jsonl(entry)
            cursor = page.get("next_cursor")
            if not cursor:
                return
            page = api.get("/v1/billing/ledger", params={**params, "limit": 1000, "cursor": cursor})


@app.command(epilog=EXIT_CODES_HELP)
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
        emit_json(data)
        return
    w = Wallet.model_validate(data)
    out.print(
        _fields(
            [
                ("tenant", w.tenant_id),
                ("as of seq", str(w.as_of_seq)),
                ("workunit_cpu", f"${w.totals.workunit_cpu}"),
                ("llm_tokens", f"${w.totals.llm_tokens}"),
                ("total", Text(f"${w.total_usd}", style="bold")),
            ]
        )
    )


@app.command(epilog=EXIT_CODES_HELP)
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
        emit_json(data)
    else:
        verdict = (
            Text("identical", style="bold green")
            if report.identical
            else Text("DIFFERENT", style="bold red")
        )
        out.print(
            _fields(
                [
                    ("replay", verdict),
                    ("live digest", report.live_digest),
                    ("replay digest", report.replay_digest),
                    ("events replayed", str(report.events_replayed)),
                    ("ledger entries", str(report.ledger_entries)),
                ]
            )
        )
    if verify and not report.identical:
        raise typer.Exit(EXIT_FAILED)


# --------------------------------------------------------------------------- capacity


def _print_capacity(data: Any, as_json: bool) -> None:
    if as_json:
        emit_json(data)
        return
    report = CapacityReport.model_validate(data)
    depth = ", ".join(f"{p} {n}" for p, n in report.queue_depth.items() if n) or "empty"
    rows: list[tuple[str, str | Text]] = [
        ("mode", Text(report.mode.value, style=MODE_STYLE[report.mode])),
        ("nodes", f"{report.healthy_nodes} healthy, {report.desired_nodes} desired"),
        ("running", str(report.running)),
        ("utilization", f"{report.utilization:.0%}"),
        ("queue", depth),
        ("last decision", _compact(report.last_decision, 300) if report.last_decision else "-"),
    ]
    out.print(_fields(rows))


@capacity_app.callback(epilog=EXIT_CODES_HELP)
def capacity(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the admission mode, nodes, queue depth by priority and the last decision."""
    if ctx.invoked_subcommand is not None:
        return
    with connect(ctx, as_json) as api:
        data = api.get("/v1/capacity")
    _print_capacity(data, as_json)


@capacity_app.command("set", epilog=EXIT_CODES_HELP)
def capacity_set(
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
    with connect(ctx, as_json) as api:
        data = api.send(
            "PUT", "/v1/capacity/mode", body={"mode": mode.value, "reason": reason, "ttl_s": ttl}
        ).json()
    _print_capacity(data, as_json)


@capacity_app.command("clear", epilog=EXIT_CODES_HELP)
def capacity_clear(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """End a manual override (admin); the autoscaler decides at its next tick."""
    with connect(ctx, as_json) as api:
        api.send("DELETE", "/v1/capacity/mode")
    if as_json:
        emit_json({"cleared": True})
    else:
        out.print("override cleared; the autoscaler decides the mode at its next tick")


# --------------------------------------------------------------------------- tenants


@tenants_app.command("create", epilog=EXIT_CODES_HELP)
def tenants_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The tenant's name.")],
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant (admin) and print its API key (shown this once)."""
    with connect(ctx, as_json) as api:
        data = api.post("/v1/tenants", {"name": name})
    if as_json:
        emit_json(data)
        return
    out.print(
        _fields(
            [
                ("tenant_id", str(data["tenant_id"])),
                ("name", str(data["name"])),
                ("api_key", Text(str(data["api_key"]), style="bold")),
            ]
        )
    )
    err.print("keep the API key: it is not shown again")


@tenants_app.command("me", epilog=EXIT_CODES_HELP)
def tenants_me(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The tenant of the token in use."""
    with connect(ctx, as_json) as api:
        data = api.get("/v1/tenants/me")
    if as_json:
        emit_json(data)
        return
    out.print(f"{data['tenant_id']} ({data['name']})")


def main() -> NoReturn:
    """The ``krako`` console script."""
    app(prog_name="krako")
    sys.exit(EXIT_OK)  # app() exits itself; this satisfies NoReturn
