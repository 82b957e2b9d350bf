"""The import-linter contract that keeps fastapi and starlette at the HTTP edge names every
part of the code but the edge, so a new module cannot slip past it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGE = {"control_plane.app", "control_plane.api", "control_plane.server"}
CONTRACT = "only the HTTP edge (app, api, server) imports fastapi or starlette"


def test_the_http_edge_contract_covers_every_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["name"] == CONTRACT]
    assert set(contract["forbidden_modules"]) == {"fastapi", "starlette"}
    parts = {"shared", "node_agent", "krako_cli"}
    for path in (ROOT / "control_plane").iterdir():
        if path.name.startswith(("_", ".")) or path.name == "py.typed":
            continue
        if path.is_dir() or path.suffix == ".py":
            parts.add(f"control_plane.{path.stem}")
    assert set(contract["source_modules"]) == parts - EDGE


def test_routes_reach_no_engine() -> None:
    """No ``engine.connect()`` (or any other use of the engine) in ``control_plane/api``:
    a route calls a command or a query, which opens what it needs."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "control_plane" / "api").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ".engine" in line or "write_transaction" in line
    ]
    assert not found, found
