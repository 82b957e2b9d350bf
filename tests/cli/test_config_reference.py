"""docs/configuration.md is generated from the settings classes and must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from control_plane.settings import Settings, leaf_settings
from node_agent.settings import RENAMED

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
    text, undocumented = _generator().render()
    assert undocumented == []
    for leaf in leaf_settings(Settings):
        row = next(
            (line for line in text.splitlines() if line.startswith(f"| `{leaf.env}` |")),
            None,
        )
        assert row is not None, leaf.env
        assert f"| `{'.'.join(leaf.path)}` |" in row, row
    assert (
        "| `KRAKO_LEASE_S` | `leases.lease_s` | float (> 0) | `30.0` | Claim lease length. |"
        in text
    )
    assert "`KRAKO_URL`" in text and "`KRAKO_TOKEN`" in text


def test_the_reference_shows_the_groups_and_the_agent_aliases() -> None:
    text, _ = _generator().render()
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == [
        f"### `{group}`"
        for group in (
            "database",
            "api",
            "leases",
            "scheduler",
            "billing",
            "autoscaler",
            "autoscaler.webhook",
            "autoscaler.kubernetes",
            "autoscaler.local",
        )
    ]
    for field, old in RENAMED.items():
        new = f"KRAKO_AGENT_{field.upper()}"
        assert f"| `{new}`<br>alias `{old}` |" in text, field


def test_variables_keep_their_documented_names() -> None:
    """The flat names are a promise (API.md, docs/configuration.md): groups change none."""
    names = {leaf.env for leaf in leaf_settings(Settings)}
    assert len(names) == len(leaf_settings(Settings)) == 55
    assert {
        "KRAKO_DEV",
        "KRAKO_DATA_DIR",
        "KRAKO_DATABASE_URL",
        "KRAKO_DB_POOL_SIZE",
        "KRAKO_ADMIN_TOKEN",
        "KRAKO_NODE_JOIN_TOKEN",
        "KRAKO_MAX_BODY_BYTES",
        "KRAKO_LEASE_S",
        "KRAKO_HEARTBEAT_INTERVAL_S",
        "KRAKO_HEARTBEAT_TIMEOUT_S",
        "KRAKO_LEASE_REAPER_INTERVAL_S",
        "KRAKO_SCHEDULER_SWEEP_INTERVAL_S",
        "KRAKO_SCHEDULER_OFFER_FANOUT",
        "KRAKO_SCHEDULER_WEIGHT_REGION",
        "KRAKO_SCHEDULER_STREAK_LIMIT",
        "KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED",
        "KRAKO_BILL_LLM_FROM_INVOCATION",
        "KRAKO_USD_PER_CPU_S",
        "KRAKO_LEDGER_JSONL_PATH",
        "KRAKO_WALLET_SNAPSHOT_EVERY",
        "KRAKO_AUTOSCALER_INTERVAL_S",
        "KRAKO_AUTOSCALER_ACTUATOR",
        "KRAKO_AUTOSCALER_SLOTS_PER_NODE",
        "KRAKO_AUTOSCALER_WEBHOOK_URL",
        "KRAKO_AUTOSCALER_WEBHOOK_SECRET",
        "KRAKO_AUTOSCALER_WEBHOOK_BACKOFF_S",
        "KRAKO_AUTOSCALER_K8S_DEPLOYMENT",
        "KRAKO_AUTOSCALER_K8S_API_URL",
        "KRAKO_AUTOSCALER_LOCAL_CONTROL_PLANE_URL",
        "KRAKO_AUTOSCALER_LOCAL_STOP_TIMEOUT_S",
    } <= names
