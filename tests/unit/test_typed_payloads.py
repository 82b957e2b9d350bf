"""Nothing in the control plane reads an event's payload by hand: rows become typed events in
``control_plane/eventlog/codec.py`` and readers use their fields. This guard fails, naming the
file and line, on an untyped read anywhere else in ``control_plane/``:

1. ``<x>.payload[...]`` or ``<x>.payload.get(...)`` (also through ``.model_extra``,
   ``.to_json_object()`` or ``.model_dump(...)``): an event's payload read as a dict;
2. ``payload[...]`` or ``payload.get(...)`` on a bare name ``payload``, except where ``payload``
   is a parameter of the enclosing function annotated ``Mapping[str, Any]`` or
   ``dict[str, Any]``. That is the *submitted unit's* payload (the unit's own JSON, which its
   kind's schema describes), not an event's: event payloads are ``Payload`` models, which
   have neither ``[...]`` nor ``.get``, so a mapping-typed parameter is never one;
3. the ``events`` table's payload column read outside ``control_plane/eventlog/``
   (``events.c.payload``, or ``select(events)``, which reads it too).

What rule 2 lets through today (reads of the submitted unit's payload):
``control_plane/units/validation.py`` ``validate_payload`` (the payload checks of submit) and
``control_plane/billing/domain/estimates.py`` ``_cpu_seconds``, ``_prompt_tokens``,
``_max_tokens`` and ``_llm_pod_cost`` (budget estimates). Reads of a work unit's row
(``work_units.c.payload``) are not event reads and are not matched at all.

``KNOWN`` lists the one untyped event read left in code another change owns; the guard fails
when it is gone, so that the entry is removed with it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ROOT / "control_plane"
CODEC = "control_plane/eventlog/codec.py"
EVENTLOG = "control_plane/eventlog/"

# (folder, enclosing function, rule): untyped event reads in code this change does not own
KNOWN: set[tuple[str, str, int]] = set()


def _known(read: Read) -> tuple[str, str, int] | None:
    for entry in KNOWN:
        folder, function, rule = entry
        if read.path.startswith(folder) and (read.function, read.rule) == (function, rule):
            return entry
    return None


_MAPPINGS = {"Mapping[str, Any]", "dict[str, Any]"}
_SEE_THROUGH_ATTRIBUTES = {"model_extra"}
_SEE_THROUGH_CALLS = {"to_json_object", "model_dump"}


@dataclass(frozen=True)
class Read:
    path: str
    line: int
    function: str
    rule: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} (in {self.function}, rule {self.rule}): {self.code}"


def _stripped(node: ast.expr) -> ast.expr:
    """The expression a read is made on, past ``.model_extra`` / ``.to_json_object()``."""
    while True:
        if isinstance(node, ast.Attribute) and node.attr in _SEE_THROUGH_ATTRIBUTES:
            node = node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SEE_THROUGH_CALLS
        ):
            node = node.func.value
        else:
            return node


def _mapping_params(function: ast.FunctionDef | ast.AsyncFunctionDef | None) -> set[str]:
    if function is None:
        return set()
    args = function.args
    return {
        a.arg
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
        if a.annotation is not None and ast.unparse(a.annotation) in _MAPPINGS
    }


class _Finder(ast.NodeVisitor):
    def __init__(self, path: str, in_eventlog: bool) -> None:
        self.path = path
        self.in_eventlog = in_eventlog
        self.functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.found: list[Read] = []

    def _report(self, node: ast.expr, rule: int) -> None:
        function = self.functions[-1].name if self.functions else "<module>"
        self.found.append(Read(self.path, node.lineno, function, rule, ast.unparse(node)))

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def _check_target(self, read: ast.expr, target: ast.expr) -> None:
        target = _stripped(target)
        if isinstance(target, ast.Attribute) and target.attr == "payload":
            self._report(read, 1)
        elif isinstance(target, ast.Name) and target.id == "payload":
            function = self.functions[-1] if self.functions else None
            if "payload" not in _mapping_params(function):
                self._report(read, 2)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._check_target(node, node.value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get":
            self._check_target(node, func.value)
        if (
            not self.in_eventlog
            and isinstance(func, ast.Name)
            and func.id == "select"
            and any(isinstance(a, ast.Name) and a.id == "events" for a in node.args)
        ):
            self._report(node, 3)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (
            not self.in_eventlog
            and node.attr == "payload"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "c"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "events"
        ):
            self._report(node, 3)
        self.generic_visit(node)


def untyped_reads(path: str, source: str) -> list[Read]:
    """The untyped event-payload reads of one module (``path`` relative to the repository)."""
    if path == CODEC:
        return []
    finder = _Finder(path, in_eventlog=path.startswith(EVENTLOG))
    finder.visit(ast.parse(source, filename=path))
    return finder.found


def _control_plane_reads() -> list[Read]:
    found: list[Read] = []
    for file in sorted(CONTROL_PLANE.rglob("*.py")):
        path = file.relative_to(ROOT).as_posix()
        found.extend(untyped_reads(path, file.read_text(encoding="utf-8")))
    return found


def test_the_control_plane_reads_event_payloads_typed() -> None:
    found = _control_plane_reads()
    unknown = [read for read in found if _known(read) is None]
    assert not unknown, "untyped event payload reads (read typed events instead):\n" + "\n".join(
        str(read) for read in unknown
    )
    gone = KNOWN - {_known(read) for read in found}
    assert not gone, f"these untyped reads are gone: remove them from KNOWN: {sorted(gone)}"


# --------------------------------------------------------------------------- the guard itself


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("def f(event):\n    return event.payload.get('requeued', False)\n", 1),
        ("def f(event):\n    return event.payload['cpu_ms']\n", 1),
        ("def f(e):\n    return e.payload.model_extra.get('x')\n", 1),
        ("def f(e):\n    return e.payload.to_json_object()['x']\n", 1),
        ("def f(e):\n    return e.payload.model_dump(by_alias=True).get('from')\n", 1),
        ("def f(event):\n    payload = event.payload\n    return payload['price_version']\n", 2),
        ("def f(payload: Mapping[str, object]):\n    return payload.get('to')\n", 2),
        ("def f(payload):\n    return payload.get('to')\n", 2),
        ("x = payload.get('to')\n", 2),
        ("def f(conn):\n    return conn.execute(select(events.c.payload))\n", 3),
        ("def f(conn):\n    return conn.execute(select(events).where(x))\n", 3),
    ],
)
def test_the_guard_names_each_untyped_read(source: str, rule: int) -> None:
    [read] = untyped_reads("control_plane/somewhere.py", source)
    assert read.rule == rule
    assert str(read).startswith("control_plane/somewhere.py:")


@pytest.mark.parametrize(
    "source",
    [
        # the submitted unit's payload, received as a mapping
        "def f(kind, payload: dict[str, Any]):\n    return payload.get('handler')\n",
        "def f(payload: Mapping[str, Any], table):\n    return payload['model']\n",
        # typed fields, and a dict that is not a payload
        "def f(event):\n    return event.payload.requeued, event.payload.pricing.price_version\n",
        "def f(args):\n    return args.get('ms')\n",
        # a work unit's row, and the events table's other columns
        "def f(conn):\n    return conn.execute(select(work_units.c.payload))\n",
        "def f(conn):\n    return conn.execute(select(events.c.seq, events.c.event_id))\n",
    ],
)
def test_the_guard_lets_typed_and_unit_payload_reads_through(source: str) -> None:
    assert untyped_reads("control_plane/somewhere.py", source) == []


def test_the_event_log_may_read_its_own_table_and_the_codec_may_read_rows() -> None:
    assert untyped_reads("control_plane/eventlog/store.py", "q = select(events)\n") == []
    assert untyped_reads(CODEC, "def f(row):\n    return row.payload['x']\n") == []
    # but the event log's other modules still read payloads typed
    assert [r.rule for r in untyped_reads("control_plane/eventlog/x.py", "e.payload['x']\n")] == [1]


def test_rule_2_lets_through_exactly_the_submitted_unit_payload_reads() -> None:
    """The docstring's list: the mapping-typed ``payload`` parameters that rule 2 spares."""
    spared: set[tuple[str, str]] = set()
    for file in sorted(CONTROL_PLANE.rglob("*.py")):
        path = file.relative_to(ROOT).as_posix()
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                "payload" in _mapping_params(node)
            ):
                reads = [
                    n
                    for n in ast.walk(node)
                    if (isinstance(n, ast.Subscript) and _is_payload_name(n.value))
                    or (
                        isinstance(n, ast.Call)
                        and isinstance(n.func, ast.Attribute)
                        and n.func.attr == "get"
                        and _is_payload_name(n.func.value)
                    )
                ]
                if reads:
                    spared.add((path, node.name))
    assert spared <= {
        ("control_plane/units/validation.py", "validate_payload"),
        ("control_plane/billing/domain/estimates.py", "_cpu_seconds"),
        ("control_plane/billing/domain/estimates.py", "_prompt_tokens"),
        ("control_plane/billing/domain/estimates.py", "_max_tokens"),
        ("control_plane/billing/domain/estimates.py", "_llm_pod_cost"),
    }, "rule 2 spares a read the docstring does not list: is it an event payload?"


def _is_payload_name(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "payload"
