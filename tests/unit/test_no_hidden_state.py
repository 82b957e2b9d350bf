"""No hidden global state in the control plane: whatever a process keeps (group commit, wake-up
publishers, clocks, caches, settings) hangs off an object that is passed in (``Database``, the
app's services), so two apps or two databases in one process share nothing and tests can move
time. This reads the source of every ``control_plane`` module and fails on:

- a ``global`` statement;
- a module-level lock, weak dictionary, ``defaultdict`` and the like (state by construction);
- a module-level container or object that some code of its module mutates (a registry):
  ``name[k] = v``, ``del name[k]``, ``name.attr = v``, ``name.add(...)``, ``name |= ...``.

Module-level constants (frozen tables, compiled statements, ``MappingProxyType`` registries
built once) are fine; so is ``functools.cache`` on a function of the code alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "control_plane"

STATEFUL_FACTORIES = {
    "WeakKeyDictionary",
    "WeakValueDictionary",
    "WeakSet",
    "defaultdict",
    "OrderedDict",
    "Counter",
    "deque",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "local",
    "Queue",
    "SimpleQueue",
    "ContextVar",
}
MUTATORS = {
    "append",
    "extend",
    "insert",
    "add",
    "update",
    "setdefault",
    "pop",
    "popitem",
    "clear",
    "remove",
    "discard",
    "put",
    "set",
}


def _called_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
    return None


def _module_level_assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """Names bound at module level (also under a top-level ``if`` / ``try``) and their value."""
    out: dict[str, ast.expr] = {}
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        stmt = todo.pop()
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            if isinstance(stmt.target, ast.Name):
                out[stmt.target.id] = stmt.value
        elif isinstance(stmt, ast.If | ast.Try):
            todo.extend(stmt.body)
            todo.extend(stmt.orelse)
            if isinstance(stmt, ast.Try):
                todo.extend(stmt.finalbody)
                for handler in stmt.handlers:
                    todo.extend(handler.body)
    return out


def _root_name(node: ast.expr) -> str | None:
    """``a`` of ``a``, ``a.b``, ``a[k]``, ``a.b[k].c``."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _mutated_names(tree: ast.Module) -> dict[str, int]:
    """Names mutated inside a function body (root name -> first line); decorators, such as a
    router's ``@router.put(...)``, are not the function's body."""
    out: dict[str, int] = {}
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        args = scope.args
        local = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
        local |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        body: list[ast.AST] = [scope.body] if isinstance(scope, ast.Lambda) else [*scope.body]
        nodes = [node for part in body for node in ast.walk(part)]
        for node in nodes:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                local.add(node.id)
        for node in nodes:
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = [t for t in node.targets if isinstance(t, ast.Attribute | ast.Subscript)]
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = [t for t in node.targets if isinstance(t, ast.Attribute | ast.Subscript)]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in MUTATORS
            ):
                targets = [node.func.value]
            for target in targets:
                name = _root_name(target)
                if name is not None and name not in local:
                    out.setdefault(name, node.lineno)
    return out


def _is_container(value: ast.expr) -> bool:
    return isinstance(
        value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp
    ) or _called_name(value) in {"dict", "list", "set"}


def hidden_state(source: str, where: str) -> list[str]:
    """What ``source`` keeps at module level (``where: line: why``); empty when nothing."""
    tree = ast.parse(source)
    problems = [
        f"{where}:{node.lineno}: global statement ({', '.join(node.names)})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    bound = _module_level_assignments(tree)
    mutated = _mutated_names(tree)
    for name, value in sorted(bound.items()):
        factory = _called_name(value)
        if factory in STATEFUL_FACTORIES:
            problems.append(f"{where}:{value.lineno}: module-level {factory}() bound to {name}")
        elif name in mutated and (_is_container(value) or isinstance(value, ast.Call)):
            problems.append(
                f"{where}:{value.lineno}: module-level {name} is mutated "
                f"(line {mutated[name]}): a registry"
            )
    return problems


def test_the_control_plane_keeps_no_module_level_state() -> None:
    problems: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        problems += hidden_state(path.read_text(), str(path.relative_to(ROOT.parent)))
    assert not problems, "hidden global state:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "_last = 0\ndef now():\n    global _last\n    _last += 1\n",
        "import threading\n_lock = threading.Lock()\n",
        "import weakref\n_cache = weakref.WeakKeyDictionary()\n",
        "_by_db: dict[int, int] = {}\ndef put(k, v):\n    _by_db[k] = v\n",
        "_seen = set()\ndef see(x):\n    _seen.add(x)\n",
        "class _Reg:\n    pass\n_reg = _Reg()\ndef put(v):\n    _reg.value = v\n",
        "_reg = {}\ndef forget(k):\n    del _reg[k]\n",
    ],
)
def test_the_guard_sees_hidden_state(source: str) -> None:
    assert hidden_state(source, "m.py")


@pytest.mark.parametrize(
    "source",
    [
        "TYPES = frozenset({'a'})\n",
        "_TERMINAL = {'a', 'b'}\ndef f(x):\n    return x in _TERMINAL\n",
        "def f():\n    out = {}\n    out['a'] = 1\n    return out\n",
        "def f(d):\n    d['a'] = 1\n",
        "import logging\nlog = logging.getLogger('x')\n",
    ],
)
def test_the_guard_lets_constants_and_locals_be(source: str) -> None:
    assert not hidden_state(source, "m.py")
