"""Command-line flags of ``krako-agent``: each one is a field of ``AgentSettings``.

Flags override ``KRAKO_*`` variables, which override ``.env``, which overrides defaults.
``--help`` prints, for every flag, its meaning, its variable and its default.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices

from node_agent.settings import AgentSettings


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line flag bound to one settings field."""

    flags: tuple[str, ...]
    field: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    repeat: bool = False  # may be given several times (values are collected)


FLAGS: tuple[Flag, ...] = (
    Flag(("--control-plane",), "control_plane_url", "URL"),
    Flag(("--join-token",), "node_join_token", "TOKEN"),
    Flag(("--node-id",), "node_id", "ID"),
    Flag(("--kinds",), "agent_kinds", "KINDS"),
    Flag(("--region",), "region", "REGION"),
    Flag(("--max-concurrency",), "max_concurrency", "N", int),
    Flag(("--labels",), "agent_labels", "K=V,..."),
    Flag(("--handler",), "agent_handlers", "NAME=MODULE:FUNC", repeat=True),
    Flag(("--polls",), "polls", "N", int),
    Flag(("--poll-wait",), "poll_wait_s", "S", float),
    Flag(("--claim-mode",), "claim_mode", None, choices=("poll", "explicit")),
    Flag(("--unit-timeout",), "unit_timeout_s", "S", float),
    Flag(("--grace-period",), "shutdown_grace_s", "S", float),
    Flag(("--report-grace",), "report_grace_s", "S", float),
    Flag(("--backoff-initial",), "backoff_initial_s", "S", float),
    Flag(("--backoff-max",), "backoff_max_s", "S", float),
    Flag(("--http-timeout",), "http_timeout_s", "S", float),
    Flag(("--poll-timeout-margin",), "poll_timeout_margin_s", "S", float),
    Flag(("--state-dir",), "agent_state_dir", "DIR"),
    Flag(("--log-level",), "log_level", "LEVEL"),
    Flag(("--log-format",), "log_format", None, choices=("kv", "json")),
    Flag(("--llm-provider",), "llm_provider", None, choices=("stub", "openai")),
    Flag(("--llm-model",), "llm_model", "MODEL"),
    Flag(("--llm-prices",), "llm_prices", "JSON", json.loads),
    Flag(("--openai-base-url",), "openai_base_url", "URL"),
    Flag(("--openai-timeout",), "openai_timeout_s", "S", float),
    Flag(("--openai-max-retries",), "openai_max_retries", "N", int),
    Flag(
        ("--openai-max-tokens-param",),
        "openai_max_tokens_param",
        None,
        choices=("max_tokens", "max_completion_tokens"),
    ),
)

ENV_ONLY = ("openai_api_key",)  # secrets stay out of the process list


def env_names(field: str) -> list[str]:
    """The environment variables that set ``field``: its name, then its aliases (older names
    still read; the first one set wins)."""
    info = AgentSettings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    if isinstance(alias, str):
        return [alias]
    return [f"KRAKO_{field.upper()}"]


def _default_text(field: str) -> str:
    info = AgentSettings.model_fields[field]
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _help(field: str) -> str:
    info = AgentSettings.model_fields[field]
    description = (info.description or field).replace("%", "%%")
    name, *aliases = env_names(field)
    envs = name + "".join(f" (alias {alias})" for alias in aliases)
    return f"{description} [env {envs}; default {_default_text(field)}]"


def build_parser() -> argparse.ArgumentParser:
    """The ``krako-agent`` argument parser (flags default to "not given")."""
    env_only = "; ".join(_help(f) for f in ENV_ONLY)
    parser = argparse.ArgumentParser(
        prog="krako-agent",
        description="Krako node agent: registers with the control plane, heartbeats, "
        "long-polls for work units, runs them (cpu handlers, llm_pod) and reports back.",
        epilog=f"Only from the environment: {env_only}. A .env file in the working "
        "directory is read too. Exit codes: 0 stopped cleanly, 2 configuration refused.",
    )
    for flag in FLAGS:
        kwargs: dict[str, Any] = {
            "dest": flag.field,
            "default": argparse.SUPPRESS,
            "help": _help(flag.field),
        }
        if flag.metavar is not None:
            kwargs["metavar"] = flag.metavar
        if flag.type is not None:
            kwargs["type"] = flag.type
        if flag.choices is not None:
            kwargs["choices"] = flag.choices
        if flag.repeat:
            kwargs["action"] = "append"
        parser.add_argument(*flag.flags, **kwargs)
    return parser


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Settings from the environment, with the flags that were given on top."""
    given = vars(args)
    overrides: dict[str, Any] = {}
    for flag in FLAGS:
        if flag.field in given:
            overrides[flag.field] = given[flag.field]
    return AgentSettings(**overrides)
