"""The control plane's settings: nested groups read from flat ``KRAKO_*`` variables and .env."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from control_plane.settings import (
    LeafSetting,
    LeaseSettings,
    Settings,
    SettingsError,
    leaf_settings,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No KRAKO_* variable (or .env) from the outside reaches these tests."""
    for name in list(os.environ):
        if name.startswith("KRAKO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def _get(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for key in path:
        value = getattr(value, key)
    return value


def _other_value(leaf: LeafSetting) -> tuple[str, Any]:
    """A valid value unlike the default: (what the variable says, what the field gets)."""
    default = leaf.info.default
    kinds = set(typing.get_args(leaf.info.annotation)) - {type(None)}
    kind = leaf.info.annotation if not kinds else kinds.pop()
    if kind is str:
        marker = f"value-of-{leaf.env.lower()}"
        return marker, marker
    if kind is bool:
        return ("0", False) if default else ("1", True)
    if kind is int:
        return str(default + 1), default + 1
    if kind is float:
        return str(default / 2), default / 2
    if kind is Decimal:
        return str(default / 2), default / 2
    if kind is Path:
        return f"/srv/{leaf.env.lower()}", Path(f"/srv/{leaf.env.lower()}")
    raise AssertionError(f"no test value for {leaf.env} ({leaf.info.annotation})")


def test_every_variable_sets_its_own_field(monkeypatch: pytest.MonkeyPatch) -> None:
    expected: dict[tuple[str, ...], Any] = {}
    for leaf in leaf_settings(Settings):
        text, value = _other_value(leaf)
        monkeypatch.setenv(leaf.env, text)
        expected[leaf.path] = value
    settings = Settings()
    for path, value in expected.items():
        assert _get(settings, path) == value, path
    assert settings.billing.bill_llm_from_workunit_completed  # both flags flipped: valid


def test_the_nested_names_keep_the_flat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKO_DATABASE_URL", "postgresql://krako@db/krako")
    monkeypatch.setenv("KRAKO_DB_POOL_SIZE", "3")
    monkeypatch.setenv("KRAKO_LEASE_REAPER_INTERVAL_S", "0.5")
    monkeypatch.setenv("KRAKO_SCHEDULER_OFFER_FANOUT", "2")
    monkeypatch.setenv("krako_autoscaler_webhook_url", "http://hook/")  # any case, as before
    monkeypatch.setenv("KRAKO_AUTOSCALER_K8S_NAMESPACE", "krako")
    monkeypatch.setenv("KRAKO_AUTOSCALER_LOCAL_AGENT_ARGS", "--kinds cpu")
    s = Settings()
    assert s.database.url == "postgresql://krako@db/krako" and s.database.pool_size == 3
    assert s.database.resolved_url == "postgresql+psycopg://krako@db/krako"
    assert s.database.is_postgres
    assert s.leases.reaper_interval_s == 0.5 and s.scheduler.offer_fanout == 2
    assert s.autoscaler.webhook.url == "http://hook/"
    assert s.autoscaler.kubernetes.namespace == "krako"
    assert s.autoscaler.local.agent_args == "--kinds cpu"


def test_code_beats_the_environment_which_beats_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "KRAKO_LEASE_S=11\nKRAKO_HEARTBEAT_INTERVAL_S=2\nKRAKO_AUTOSCALER_MAX_NODES=7\n"
        "KRAKO_SOMETHING_ELSE=ignored\n"
    )
    monkeypatch.setenv("KRAKO_LEASE_S", "12")
    s = Settings()
    assert s.leases.lease_s == 12  # the environment over .env
    assert s.leases.heartbeat_interval_s == 2 and s.autoscaler.max_nodes == 7  # .env read
    # a group given in code replaces only the fields it names; the rest still come from
    # the environment and .env
    s = Settings(leases={"lease_s": 13}, autoscaler={"webhook": {"retries": 1}})
    assert s.leases.lease_s == 13 and s.leases.heartbeat_interval_s == 2
    assert s.autoscaler.max_nodes == 7 and s.autoscaler.webhook.retries == 1
    # a whole model given in code is taken as it is
    assert Settings(leases=LeaseSettings()).leases.lease_s == 30.0
    assert Settings(_env_file=None).leases.heartbeat_interval_s == 5.0  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "values",
    [
        {"lease_s": 5},  # a field outside its group
        {"leases": {"lease": 5}},  # a misspelt field
        {"autoscaler": {"webhook": {"URL": "http://x/"}}},
    ],
)
def test_an_unknown_setting_in_code_is_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_validators_refuse_unsafe_combinations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED", "1")
    with pytest.raises(ValueError, match="would bill every LLM token twice"):
        Settings()
    monkeypatch.setenv("KRAKO_BILL_LLM_FROM_INVOCATION", "0")
    Settings()
    monkeypatch.setenv("KRAKO_HEARTBEAT_INTERVAL_S", "30")
    with pytest.raises(ValueError, match="KRAKO_HEARTBEAT_TIMEOUT_S must exceed"):
        Settings()
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(leases={"lease_s": 0, "heartbeat_interval_s": 1})


def test_the_server_refuses_equal_admin_and_join_tokens(tmp_path: Path) -> None:
    """A real ``krako-control-plane`` process: exit 2, one line on stderr, no token in it."""
    token = "the-same-token-for-both-roles"
    env = {
        **os.environ,
        "KRAKO_ADMIN_TOKEN": token,
        "KRAKO_NODE_JOIN_TOKEN": token,
        "KRAKO_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.server", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "configuration error" in lines[0] and "must differ" in lines[0]
    assert token not in done.stderr


def test_tokens_are_required_and_long_outside_dev_mode() -> None:
    with pytest.raises(SettingsError, match="KRAKO_ADMIN_TOKEN, KRAKO_NODE_JOIN_TOKEN not set"):
        Settings().require_tokens()
    short = Settings(api={"admin_token": "a" * 15, "node_join_token": "j" * 16})
    with pytest.raises(SettingsError, match="KRAKO_ADMIN_TOKEN is too short"):
        short.require_tokens()
    Settings(api={"admin_token": "a" * 15, "node_join_token": "j", "dev": True}).require_tokens()
    same = Settings(api={"admin_token": "t" * 16, "node_join_token": "t" * 16})
    with pytest.raises(SettingsError, match="must differ"):
        same.require_tokens()

    dev, notes = Settings(api={"dev": True, "admin_token": "a" * 16}).with_dev_tokens()
    assert dev.api.admin_token == "a" * 16
    assert dev.api.node_join_token is not None and dev.api.node_join_token.startswith("kj_")
    assert notes == [f"KRAKO_NODE_JOIN_TOKEN={dev.api.node_join_token}"]
    dev.require_tokens()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.leases.lease_s = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.leases = LeaseSettings()  # type: ignore[misc]
