"""docs/configuration.md is generated from the settings classes and must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from control_plane.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_config_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current() -> None:
    expected, _ = _generator().render()
    target = REPO / "docs" / "configuration.md"
    current = target.read_text(encoding="utf-8") if target.exists() else ""
    assert current == expected, (
        "docs/configuration.md is stale: run `python scripts/gen_config_reference.py` "
        "and commit the result"
    )


def test_every_control_plane_setting_is_listed_with_its_default() -> None:
    text, _ = _generator().render()
    for name in Settings.model_fields:
        row = next(
            (line for line in text.splitlines() if line.startswith(f"| `KRAKO_{name.upper()}`")),
            None,
        )
        assert row is not None, name
    assert "| `KRAKO_LEASE_S` | float (> 0) | `30.0` | Claim lease length. |" in text
    assert "`KRAKO_URL`" in text and "`KRAKO_TOKEN`" in text
