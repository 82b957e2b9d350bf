"""``units/lifecycle.py`` is the only writer of a work unit's state: ``work_units``,
``offers``, ``claims``, ``queue_depth`` and the node slot counter ``nodes.running``.

The guard parses every module of ``control_plane`` (the migrations aside) and names the file
and line of any other module that builds an insert, update or delete on those tables, sets
``running`` in a statement on ``nodes``, or carries raw SQL text that writes them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from sqlalchemy import Table

import control_plane
from control_plane.db import tables

ROOT = Path(control_plane.__file__).resolve().parent
OWNER = ROOT / "units" / "lifecycle.py"
EXEMPT_DIRS = [ROOT / "db" / "migrations"]

PROTECTED = frozenset({"work_units", "offers", "claims", "queue_depth"})
NODES = "nodes"
WRITES = frozenset({"insert", "update", "delete"})

_RAW_WRITE = re.compile(
    r"\b(?:insert\s+into|update|delete\s+from)\s+\"?(work_units|offers|claims|queue_depth)\b",
    re.IGNORECASE,
)
_RAW_RUNNING = re.compile(r"\bupdate\s+\"?nodes\"?\s+set\b[^;]*\brunning\b", re.IGNORECASE | re.S)


def _table_names() -> dict[str, str]:
    """Attribute of ``control_plane.db.tables`` -> the name of the table it is (so a rename of
    the Python name, or a model class with a ``__table__``, is still recognised)."""
    out: dict[str, str] = {}
    for attr, value in vars(tables).items():
        table = value if isinstance(value, Table) else getattr(value, "__table__", None)
        if isinstance(table, Table) and (table.name in PROTECTED or table.name == NODES):
            out[attr] = table.name
    return out


TABLE_ATTRS = _table_names()


class _Scanner(ast.NodeVisitor):
    def __init__(self, where: str) -> None:
        self.where = where
        self.found: list[str] = []
        self.tables: dict[str, str] = {}  # local name -> table name
        self.table_modules: set[str] = set()  # local names of control_plane.db.tables
        self.write_funcs: set[str] = set()  # local names of sqlalchemy insert/update/delete
        self.docstrings: set[int] = set()

    # -------------------------------------------------------------- name resolution

    def collect(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    if node.module == "control_plane.db.tables" and alias.name in TABLE_ATTRS:
                        self.tables[local] = TABLE_ATTRS[alias.name]
                    elif node.module == "control_plane.db" and alias.name == "tables":
                        self.table_modules.add(local)
                    elif node.module.startswith("sqlalchemy") and alias.name in WRITES:
                        self.write_funcs.add(local)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "control_plane.db.tables" and alias.asname:
                        self.table_modules.add(alias.asname)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    self.docstrings.add(id(body[0].value))

    def table_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.tables.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in self.table_modules:
                return TABLE_ATTRS.get(node.attr)
            if node.attr == "__table__":
                return self.table_of(node.value)
        return None

    def write_target(self, call: ast.Call) -> str | None:
        """The table a write statement is built on, for any call of its chain
        (``update(t)``, ``t.insert()``, ``pg_insert(t).values(...)``, ``….where(...)``)."""
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in WRITES:
            target = self.table_of(func.value)
            if target is not None:
                return target
        name = (
            func.id
            if isinstance(func, ast.Name)
            else func.attr
            if isinstance(func, ast.Attribute)
            else None
        )
        if call.args and name is not None:
            is_write = name in self.write_funcs or (
                isinstance(func, ast.Attribute) and name in WRITES
            )
            if is_write:
                target = self.table_of(call.args[0])
                if target is not None:
                    return target
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
            return self.write_target(func.value)
        return None

    # -------------------------------------------------------------- checks

    def report(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.where}:{getattr(node, 'lineno', '?')}: {what}")

    def visit_Call(self, node: ast.Call) -> None:
        target = self.write_target(node)
        func = node.func
        if target in PROTECTED and not (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
        ):
            # reported once, at the call that starts the statement
            self.report(node, f"writes {target} ({ast.unparse(node)[:80]})")
        if (
            isinstance(func, ast.Attribute)
            and (target == NODES or func.attr == "values")
            and _sets_running(node)
        ):
            self.report(node, f"sets nodes.running ({ast.unparse(node)[:80]})")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and id(node) not in self.docstrings:
            m = _RAW_WRITE.search(node.value)
            if m:
                self.report(node, f"raw SQL writes {m.group(1)}")
            elif _RAW_RUNNING.search(node.value):
                self.report(node, "raw SQL sets nodes.running")


def _sets_running(call: ast.Call) -> bool:
    for kw in call.keywords:
        if kw.arg == "running":
            return True
        if kw.arg is None and _dict_has_running(kw.value):  # **{"running": ...}
            return True
        if kw.arg == "set_" and _dict_has_running(kw.value):  # on_conflict_do_update
            return True
    return any(_dict_has_running(a) for a in call.args)


def _dict_has_running(node: ast.expr) -> bool:
    return isinstance(node, ast.Dict) and any(
        isinstance(k, ast.Constant) and k.value == "running" for k in node.keys
    )


def scan(source: str, where: str) -> list[str]:
    """Every write of the lifecycle's tables in ``source``, as ``where:line: what``."""
    tree = ast.parse(source)
    scanner = _Scanner(where)
    scanner.collect(tree)
    scanner.visit(tree)
    return scanner.found


def _modules(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.py")
        if p != root / OWNER.relative_to(ROOT)
        and not any(p.is_relative_to(root / d.relative_to(ROOT)) for d in EXEMPT_DIRS)
    )


def scan_package(root: Path) -> list[str]:
    found: list[str] = []
    for path in _modules(root):
        found += scan(path.read_text(), str(path.relative_to(root.parent)))
    return found


def test_the_tables_are_known() -> None:
    assert set(TABLE_ATTRS.values()) == PROTECTED | {NODES}


def test_only_the_lifecycle_writes_unit_state() -> None:
    found = scan_package(ROOT)
    assert not found, "only control_plane/units/lifecycle.py may write these:\n" + "\n".join(found)


def test_the_lifecycle_is_scanned_and_writes() -> None:
    """The owner exists and really is where the writes went (so the exemption is not stale)."""
    found = scan(OWNER.read_text(), "lifecycle.py")
    kinds = " ".join(found)
    for table in PROTECTED:
        assert f"writes {table}" in kinds, table
    assert "sets nodes.running" in kinds


@pytest.mark.parametrize(
    "source",
    [
        "from control_plane.db.tables import work_units\nwork_units.insert()",
        "from control_plane.db.tables import offers\noffers.delete().where(offers.c.x == 1)",
        "from sqlalchemy import update\nfrom control_plane.db.tables import work_units\n"
        "update(work_units).values(status='x')",
        "from sqlalchemy import delete\nfrom control_plane.db.tables import claims as c\ndelete(c)",
        "from sqlalchemy.dialects.sqlite import insert as ins\n"
        "from control_plane.db.tables import queue_depth\n"
        "ins(queue_depth).on_conflict_do_nothing()",
        "from control_plane.db import tables as t\nt.offers.insert()",
        "import sqlalchemy as sa\nfrom control_plane.db.tables import work_units\n"
        "sa.update(work_units)",
        "from sqlalchemy import update\nfrom control_plane.db.tables import nodes\n"
        "update(nodes).where(nodes.c.node_id == 'n').values(running=nodes.c.running - 1)",
        "from control_plane.db.tables import nodes\nnodes.update().values({'running': 0})",
        "stmt.values(running=3)",
        "from sqlalchemy import text\ntext('UPDATE work_units SET status = :s')",
        "q = 'delete from offers where work_unit_id = :id'",
        "q = 'INSERT INTO \"claims\" (work_unit_id) VALUES (:id)'",
        "q = 'UPDATE nodes SET health = :h, running = running - 1'",
        "def f():\n    from control_plane.db.tables import work_units\n    work_units.update()",
    ],
)
def test_the_guard_catches(source: str) -> None:
    assert scan(source, "m.py"), source


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import select\nfrom control_plane.db.tables import work_units\n"
        "select(work_units).where(work_units.c.status == 'queued')",
        "from sqlalchemy import update\nfrom control_plane.db.tables import nodes\n"
        "update(nodes).values(health='healthy', drained=True)",
        "from control_plane.db.tables import nodes\nnodes.insert().values(node_id='n')",
        "from sqlalchemy import update\nfrom control_plane.db.tables import tenants\n"
        "update(tenants).values(max_running=3)",
        "q = 'SELECT * FROM work_units WHERE status = :s'",
        '"""A module that explains: UPDATE work_units SET status happens in lifecycle."""',
    ],
)
def test_the_guard_lets_reads_and_other_writes_pass(source: str) -> None:
    assert scan(source, "m.py") == [], source
