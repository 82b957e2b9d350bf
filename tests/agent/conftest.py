"""Fixtures for the node agent tests: clean environment, fast settings, a fake control plane."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.settings import AgentSettings
from tests.agent.gated_handlers import GATES, Gate


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No KRAKO_*/OPENAI_* variables (or .env) from the outside leak into a test."""
    for name in list(os.environ):
        if name.startswith(("KRAKO_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main()`` configures logging for a daemon; undo it so other tests keep their handlers."""
    root, agent = logging.getLogger(), logging.getLogger("krako.agent")
    handlers, level, agent_level = list(root.handlers), root.level, agent.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    agent.setLevel(agent_level)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., AgentSettings]:
    """Settings with fast timings, a private state dir and no .env file."""

    def build(**overrides: Any) -> AgentSettings:
        values: dict[str, Any] = {
            "control_plane_url": "http://cp.test",
            "node_join_token": "join-secret",
            "agent_state_dir": tmp_path / "state",
            "poll_wait_s": 0.2,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "shutdown_grace_s": 2.0,
            "report_grace_s": 1.0,
            "http_timeout_s": 2.0,
            "log_level": "DEBUG",
        }
        values.update(overrides)
        return AgentSettings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture
def gates() -> Iterator[Callable[[str], Gate]]:
    """``gates(name)``: a fresh gate for the ``hold`` handler; every gate is released after
    the test, so no handler thread outlives it by long."""
    made: list[str] = []

    def make(name: str) -> Gate:
        GATES[name] = gate = Gate()
        made.append(name)
        return gate

    yield make
    for name in made:
        GATES.pop(name).released.set()
