"""The agent's one settings class: every ``KRAKO_*`` variable the daemon reads.

Built once in :func:`node_agent.main.main` (command-line flags override the environment,
which overrides a ``.env`` file, which overrides the defaults) and passed down; nothing
reads the environment anywhere else.

The agent and the control plane share one namespace of variables (one ``.env``, one
Kubernetes ConfigMap, and the local actuator hands its environment to the agents it starts),
and each ignores the other's. So a setting that only the agent reads is named
``KRAKO_AGENT_*`` when a bare name would pass for the control plane's: ``KRAKO_LOG_LEVEL``
said nothing about the control plane's log level (that is its ``--log-level`` flag),
``KRAKO_SHUTDOWN_GRACE_S`` nothing about its graceful shutdown, ``KRAKO_HTTP_TIMEOUT_S`` and
``KRAKO_BACKOFF_*`` nothing about its webhook's timeout and backoff. The old names are still
read, as aliases (:data:`RENAMED`); when both are set the ``KRAKO_AGENT_*`` one wins. The
variables of the documented flags keep their names (``KRAKO_CONTROL_PLANE_URL``,
``KRAKO_NODE_JOIN_TOKEN``, the same secret on both sides, ``KRAKO_NODE_ID``,
``KRAKO_AGENT_KINDS``, ``KRAKO_REGION``, ``KRAKO_MAX_CONCURRENCY``, ``KRAKO_LLM_PROVIDER``,
``KRAKO_POLLS``, ``KRAKO_POLL_WAIT_S``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.enums import WorkUnitKind
from shared.wire import MAX_WAIT_S

HANDLER_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)=(?P<module>[\w.]+):(?P<attr>[\w.]+)$")


#: Variables renamed to ``KRAKO_AGENT_*``, by field: the old name, still read as an alias.
RENAMED: dict[str, str] = {
    "claim_mode": "KRAKO_CLAIM_MODE",
    "unit_timeout_s": "KRAKO_UNIT_TIMEOUT_S",
    "shutdown_grace_s": "KRAKO_SHUTDOWN_GRACE_S",
    "report_grace_s": "KRAKO_REPORT_GRACE_S",
    "backoff_initial_s": "KRAKO_BACKOFF_INITIAL_S",
    "backoff_max_s": "KRAKO_BACKOFF_MAX_S",
    "http_timeout_s": "KRAKO_HTTP_TIMEOUT_S",
    "poll_timeout_margin_s": "KRAKO_POLL_TIMEOUT_MARGIN_S",
    "log_level": "KRAKO_LOG_LEVEL",
    "log_format": "KRAKO_LOG_FORMAT",
}


def _agent_env(field: str) -> AliasChoices:
    """``KRAKO_AGENT_<FIELD>``, then the field's old name."""
    return AliasChoices(f"KRAKO_AGENT_{field.upper()}", RENAMED[field])


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class AgentSettings(BaseSettings):
    """Configuration of one ``krako-agent`` process (env prefix ``KRAKO_``)."""

    model_config = SettingsConfigDict(
        env_prefix="KRAKO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    # -- control plane
    control_plane_url: str = Field(
        default="http://127.0.0.1:8080", description="Base URL of the control plane."
    )
    node_join_token: SecretStr | None = Field(
        default=None, description="Join token used to register the node (required)."
    )
    node_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        max_length=100,
        description="Node id; by default the one kept in the state dir (or assigned).",
    )

    # -- what this node offers
    agent_kinds: Annotated[list[WorkUnitKind], NoDecode] = Field(
        default_factory=lambda: [WorkUnitKind.CPU, WorkUnitKind.LLM_POD],
        description="Work unit kinds to accept, comma separated.",
    )
    region: str | None = Field(default=None, max_length=100, description="Region of this node.")
    max_concurrency: int = Field(default=4, ge=1, le=10_000, description="Most units run at once.")
    agent_labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Node labels, comma separated key=value pairs."
    )
    agent_handlers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra cpu handlers, name=module:function (comma separated in the env).",
    )

    # -- polling
    polls: int | None = Field(
        default=None, ge=1, description="Exit after this many polls, once held units finish."
    )
    poll_wait_s: float = Field(
        default=20.0, ge=0, le=MAX_WAIT_S, description="Long-poll hold per poll (0-30 s)."
    )
    claim_mode: Literal["poll", "explicit"] = Field(
        validation_alias=_agent_env("claim_mode"),
        default="poll",
        description="poll: claim in the poll itself (one request per batch); explicit: poll "
        "for offers, then claim each one (a lost race is logged as skipped).",
    )

    # -- execution
    unit_timeout_s: float = Field(
        validation_alias=_agent_env("unit_timeout_s"),
        default=300.0,
        gt=0,
        description="Default per-unit timeout when the payload has no timeout_s.",
    )
    shutdown_grace_s: float = Field(
        validation_alias=_agent_env("shutdown_grace_s"),
        default=30.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long running units may finish before they are "
        "failed as retryable.",
    )
    report_grace_s: float = Field(
        validation_alias=_agent_env("report_grace_s"),
        default=15.0,
        ge=0,
        description="On shutdown, how long to keep retrying reports after the grace period.",
    )

    # -- resilience
    backoff_initial_s: float = Field(
        validation_alias=_agent_env("backoff_initial_s"),
        default=0.5,
        gt=0,
        description="First retry delay when the control plane fails.",
    )
    backoff_max_s: float = Field(
        validation_alias=_agent_env("backoff_max_s"),
        default=30.0,
        gt=0,
        description="Longest retry delay.",
    )
    http_timeout_s: float = Field(
        validation_alias=_agent_env("http_timeout_s"),
        default=10.0,
        gt=0,
        description="Timeout of control-plane calls other than polls.",
    )
    poll_timeout_margin_s: float = Field(
        validation_alias=_agent_env("poll_timeout_margin_s"),
        default=10.0,
        gt=0,
        description="Read timeout of a poll beyond its hold time.",
    )

    # -- state and logs
    agent_state_dir: Path | None = Field(
        default=None,
        description="Where the node id is kept; default ./.krako/agent/slot-<n> (one slot "
        "per running agent).",
    )
    log_level: str = Field(
        validation_alias=_agent_env("log_level"),
        default="INFO",
        description="DEBUG, INFO, WARNING or ERROR.",
    )
    log_format: Literal["kv", "json"] = Field(
        validation_alias=_agent_env("log_format"),
        default="kv",
        description="key=value lines or JSON lines.",
    )

    # -- LLM
    llm_provider: Literal["stub", "openai"] = Field(
        default="stub", description="LLM provider for llm_pod units."
    )
    llm_model: str = Field(
        default="gpt-4o-mini",
        validation_alias=AliasChoices("KRAKO_LLM_MODEL", "KRAKO_OPENAI_MODEL"),
        description="Model when the payload names none.",
    )
    llm_prices: dict[str, tuple[str, str]] = Field(
        default_factory=dict,
        description='Extra or overriding USD per 1M tokens, JSON {"model": ["in", "out"]}.',
    )
    openai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (default: api.openai.com)."
    )
    openai_api_key: SecretStr | None = Field(
        default=None, description="API key (else OPENAI_API_KEY)."
    )
    openai_timeout_s: float = Field(default=60.0, gt=0, description="Per-request LLM timeout.")
    openai_max_retries: int = Field(
        default=2, ge=0, le=10, description="SDK retries on 429, 5xx and timeouts."
    )
    openai_max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens", description="Request field that carries max_tokens."
    )

    @field_validator("agent_kinds", "agent_handlers", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("agent_labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            labels: dict[str, str] = {}
            for part in _split_csv(value):
                key, sep, val = part.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"label {part!r} is not key=value")
                labels[key.strip()] = val.strip()
            return labels
        return value

    @field_validator("agent_handlers")
    @classmethod
    def _handler_specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            if not HANDLER_SPEC.match(spec):
                raise ValueError(f"handler {spec!r} is not name=module:function")
        return value

    @field_validator("agent_kinds")
    @classmethod
    def _kinds(cls, value: list[WorkUnitKind]) -> list[WorkUnitKind]:
        if not value:
            raise ValueError("at least one kind is needed")
        return list(dict.fromkeys(value))

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @field_validator("llm_prices")
    @classmethod
    def _prices(cls, value: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        from shared.money import parse_rate

        for model, (rate_in, rate_out) in value.items():
            parse_rate(rate_in)
            parse_rate(rate_out)
            if not model:
                raise ValueError("empty model name in llm_prices")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> AgentSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self

    def handler_specs(self) -> list[tuple[str, str]]:
        """The ``--handler`` specs as ``(name, "module:function")`` pairs."""
        pairs = []
        for spec in self.agent_handlers:
            match = HANDLER_SPEC.match(spec)
            assert match is not None  # checked by the validator
            pairs.append((match["name"], f"{match['module']}:{match['attr']}"))
        return pairs
