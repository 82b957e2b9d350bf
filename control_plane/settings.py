"""The control plane's settings: one ``Settings`` object made of groups, read from ``KRAKO_*``
variables and ``.env``.

Built once in ``main()`` / ``create_app(settings)`` and passed in; never read at import time::

    Settings
      database     url, data_dir, pool_size
      api          dev, admin_token, node_join_token, max_body_bytes
      leases       lease_s, heartbeat_interval_s, heartbeat_timeout_s, reaper_interval_s
      scheduler    sweep_interval_s, offer_fanout, weight_*, streak_limit
      billing      bill_llm_from_*, usd_per_cpu_s, ledger_jsonl_path, wallet_snapshot_every
      autoscaler   interval_s, actuator, node bounds, hysteresis thresholds, targets
        webhook    url, secret, timeout_s, retries, backoff_s (also the kubernetes actuator's)
        kubernetes deployment, namespace, api_url
        local      control_plane_url, agent_args, stop_timeout_s

The groups are nested in Python only: every variable keeps its flat name (``KRAKO_LEASE_S``,
``KRAKO_SCHEDULER_OFFER_FANOUT``, ``KRAKO_AUTOSCALER_WEBHOOK_URL``), which is a documented
promise. A field's variable is its group's ``env_prefix`` plus the field name in capitals,
unless its annotation carries an :class:`Env` naming another (``database.url`` is
``KRAKO_DATABASE_URL``). :func:`leaf_settings` lists them all (the configuration reference is
generated from it). In code, groups are given as models or as dicts of their fields::

    Settings(database={"url": "sqlite:///x.db"}, leases={"lease_s": 5})

A field set this way wins over the environment, which wins over ``.env``, which wins over the
default; an unknown group or field is an error, not silently ignored.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "ApiSettings",
    "AutoscalerSettings",
    "BillingSettings",
    "DatabaseSettings",
    "Env",
    "KubernetesActuatorSettings",
    "LeafSetting",
    "LeaseSettings",
    "LocalActuatorSettings",
    "SchedulerSettings",
    "Settings",
    "SettingsError",
    "SettingsGroup",
    "WebhookActuatorSettings",
    "leaf_settings",
]


class SettingsError(ValueError):
    """The configuration is unsafe or inconsistent; the process refuses to start."""


@dataclass(frozen=True, slots=True)
class Env:
    """Annotation marker: the field's variable, when it is not ``env_prefix + NAME``."""

    name: str


class SettingsGroup(BaseModel):
    """A group of related settings; each field is ``env_prefix + FIELD`` in the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env_prefix: ClassVar[str] = "KRAKO_"


# --------------------------------------------------------------------------- groups


class DatabaseSettings(SettingsGroup):
    """Where the event log and its projections live."""

    url: Annotated[str | None, Env("KRAKO_DATABASE_URL")] = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite at DATA_DIR/krako.db. "
        "postgresql://user@host/db selects PostgreSQL (psycopg 3).",
    )
    data_dir: Path = Field(default=Path("./.krako"), description="Where the SQLite file lives.")
    pool_size: Annotated[int, Env("KRAKO_DB_POOL_SIZE")] = Field(
        default=10, ge=1, description="Database connections kept open per control-plane process."
    )

    @property
    def resolved_url(self) -> str:
        """The SQLAlchemy URL in use (``postgresql://`` selects the psycopg 3 driver)."""
        if self.url:
            url = self.url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'krako.db').resolve()}"

    @property
    def is_postgres(self) -> bool:
        return self.resolved_url.startswith("postgresql")


class ApiSettings(SettingsGroup):
    """Who may call the API, and how much a request may carry."""

    dev: bool = Field(
        default=False,
        description="Development mode: missing tokens are generated and printed at start.",
    )
    admin_token: str | None = Field(default=None, description="Bearer token of the admin role.")
    node_join_token: str | None = Field(
        default=None, description="Bearer token agents present to register."
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Request body limit.")


class LeaseSettings(SettingsGroup):
    """Claim leases and node heartbeats (the timings agents are told at registration)."""

    lease_s: float = Field(default=30.0, gt=0, description="Claim lease length.")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="Agent heartbeat interval.")
    heartbeat_timeout_s: float = Field(
        default=30.0, gt=0, description="A node without a heartbeat this long is unhealthy."
    )
    reaper_interval_s: Annotated[float, Env("KRAKO_LEASE_REAPER_INTERVAL_S")] = Field(
        default=1.0, gt=0, description="Lease reaper period."
    )

    @model_validator(mode="after")
    def _heartbeat_order(self) -> Self:
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError("KRAKO_HEARTBEAT_TIMEOUT_S must exceed KRAKO_HEARTBEAT_INTERVAL_S")
        return self


class SchedulerSettings(SettingsGroup):
    """Placement: the score weights, the offer fan-out and the anti-affinity streak limit."""

    env_prefix: ClassVar[str] = "KRAKO_SCHEDULER_"

    sweep_interval_s: float = Field(
        default=1.0, gt=0, description="Period of the background placement sweep."
    )
    offer_fanout: int = Field(
        default=1, ge=1, le=16, description="Offer each unit to its k best candidates."
    )
    weight_free_capacity: float = Field(
        default=1.0, ge=0, description="Placement score weight of a node's free-slot fraction."
    )
    weight_load: float = Field(
        default=0.5, ge=0, description="Placement score weight of low reported load."
    )
    weight_trust: float = Field(
        default=1.0, ge=0, description="Placement score weight of the node's trust score."
    )
    weight_region: float = Field(
        default=0.5,
        ge=0,
        description="Placement score bonus when the node is in the unit's region.",
    )
    streak_limit: int = Field(
        default=3, ge=1, description="Max consecutive units of a session on one node."
    )


class BillingSettings(SettingsGroup):
    """What is billed and at which CPU rate (recorded in the log: replay never reads these)."""

    bill_llm_from_workunit_completed: bool = Field(
        default=False, description="Bill LLM tokens from workunit.completed (usage summed)."
    )
    bill_llm_from_invocation: bool = Field(
        default=True, description="Bill LLM tokens from llm.invocation.completed."
    )
    usd_per_cpu_s: Decimal = Field(
        default=Decimal("0.000050"), ge=0, description="CPU rate, USD per CPU second."
    )
    ledger_jsonl_path: Path | None = Field(
        default=None, description="Optional append-only JSONL file sink of the ledger."
    )
    wallet_snapshot_every: int = Field(
        default=10_000, ge=1, description="Store a wallet snapshot every N events folded."
    )

    @model_validator(mode="after")
    def _bill_once(self) -> Self:
        if self.bill_llm_from_workunit_completed and self.bill_llm_from_invocation:
            raise SettingsError(
                "KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED=1 and KRAKO_BILL_LLM_FROM_INVOCATION=1 "
                "would bill every LLM token twice; turn one of them off"
            )
        return self


class WebhookActuatorSettings(SettingsGroup):
    """The webhook actuator; its timeout and retries also serve the kubernetes actuator."""

    env_prefix: ClassVar[str] = "KRAKO_AUTOSCALER_WEBHOOK_"

    url: str | None = Field(
        default=None, description="Where the webhook actuator POSTs scale requests."
    )
    secret: str | None = Field(
        default=None, description="HMAC-SHA256 key signing webhook bodies (X-Krako-Signature)."
    )
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="webhook and kubernetes actuators: timeout of one attempt.",
    )
    retries: int = Field(
        default=4,
        ge=0,
        le=20,
        description="webhook and kubernetes actuators: retries after a failed attempt.",
    )
    backoff_s: float = Field(
        default=0.5,
        gt=0,
        description="webhook and kubernetes actuators: first retry delay (doubled at each "
        "retry, jittered).",
    )


class KubernetesActuatorSettings(SettingsGroup):
    """The kubernetes actuator: which Deployment's replicas it sets, through which API."""

    env_prefix: ClassVar[str] = "KRAKO_AUTOSCALER_K8S_"

    deployment: str = Field(
        default="krako-agent",
        description="kubernetes actuator: the agent Deployment whose replicas it sets.",
    )
    namespace: str | None = Field(
        default=None,
        description="kubernetes actuator: the Deployment's namespace (default: the pod's own).",
    )
    api_url: str | None = Field(
        default=None,
        description="kubernetes actuator: API server URL (default: the in-cluster service).",
    )


class LocalActuatorSettings(SettingsGroup):
    """The local actuator: the ``krako-agent`` processes it starts on this machine."""

    env_prefix: ClassVar[str] = "KRAKO_AUTOSCALER_LOCAL_"

    control_plane_url: str = Field(
        default="http://127.0.0.1:8080",
        description="local actuator: the URL its agents use to reach this control plane.",
    )
    agent_args: str = Field(
        default="",
        description="local actuator: extra krako-agent arguments, shell-quoted "
        "(for example '--max-concurrency 2 --kinds cpu').",
    )
    stop_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="local actuator: on shutdown, how long its agents may take to exit after "
        "SIGTERM before they are killed.",
    )


class AutoscalerSettings(SettingsGroup):
    """The autoscaling controller (interval, node bounds, hysteresis) and its actuators."""

    env_prefix: ClassVar[str] = "KRAKO_AUTOSCALER_"

    interval_s: float = Field(default=2.0, gt=0, description="Autoscaler period.")
    actuator: str = Field(default="log", description="log | local | webhook | kubernetes")
    min_nodes: int = Field(
        default=0, ge=0, description="The autoscaler never asks for fewer nodes."
    )
    max_nodes: int = Field(
        default=10, ge=0, description="The autoscaler never asks for more nodes."
    )
    min_hold_s: float = Field(
        default=30.0, ge=0, description="An admission mode holds at least this long."
    )
    scale_down_window_s: float = Field(
        default=120.0,
        ge=0,
        description="Scale down only after the node recommendation stayed lower this long "
        "(then to the highest recommendation of the window).",
    )
    scale_up_cooldown_s: float = Field(
        default=10.0, ge=0, description="Least time between two scale-up requests."
    )
    throttle_up_backlog_per_slot: float = Field(
        default=4.0,
        ge=0,
        description="OPEN to THROTTLED when queued units per slot reach this (while capacity "
        "is saturated).",
    )
    throttle_down_backlog_per_slot: float = Field(
        default=1.0, ge=0, description="THROTTLED to OPEN when queued units per slot fall below."
    )
    throttle_up_age_s: float = Field(
        default=120.0,
        ge=0,
        description="OPEN to THROTTLED when the oldest queued unit waited this long (while "
        "capacity is saturated).",
    )
    throttle_down_age_s: float = Field(
        default=30.0,
        ge=0,
        description="THROTTLED to OPEN needs the oldest queued unit younger than this.",
    )
    critical_up_backlog_per_slot: float = Field(
        default=16.0,
        ge=0,
        description="To CRITICAL when queued p0-p1 units per slot reach this (while capacity "
        "is saturated).",
    )
    critical_down_backlog_per_slot: float = Field(
        default=4.0,
        ge=0,
        description="CRITICAL to THROTTLED when queued p0-p1 units per slot fall below.",
    )
    critical_up_age_s: float = Field(
        default=600.0,
        ge=0,
        description="To CRITICAL when the oldest queued p0-p1 unit waited this long (while "
        "capacity is saturated).",
    )
    critical_down_age_s: float = Field(
        default=120.0,
        ge=0,
        description="CRITICAL to THROTTLED needs the oldest queued p0-p1 unit younger than this.",
    )
    saturated_utilization: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Modes go up only while utilization (busy / total slots) is at least this.",
    )
    idle_utilization: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Below this utilization a restrictive mode steps down (it must not leave "
        "capacity idle).",
    )
    idle_hold_s: float = Field(
        default=5.0,
        ge=0,
        description="Utilization must stay below the idle threshold this long before a "
        "restrictive mode steps down (one idle sample between two units is noise).",
    )
    target_utilization: float = Field(
        default=0.8, gt=0, le=1, description="Utilization the node count aims at."
    )
    target_backlog_per_slot: float = Field(
        default=1.0, ge=0, description="Queued units per slot the node count tolerates."
    )
    slots_per_node: int = Field(
        default=4,
        ge=1,
        description="Slots a new node is assumed to bring while no healthy node tells.",
    )

    webhook: WebhookActuatorSettings = Field(default_factory=WebhookActuatorSettings)
    kubernetes: KubernetesActuatorSettings = Field(default_factory=KubernetesActuatorSettings)
    local: LocalActuatorSettings = Field(default_factory=LocalActuatorSettings)


# --------------------------------------------------------------------------- the whole


class Settings(BaseSettings):
    """Every setting of the control plane, by group (see the module docstring)."""

    model_config = SettingsConfigDict(
        env_prefix="KRAKO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",  # a misspelt group or field given in code is an error
        frozen=True,
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    leases: LeaseSettings = Field(default_factory=LeaseSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The built-in sources would look for KRAKO_LEASES (JSON) or KRAKO_LEASES__LEASE_S;
        # ours read the flat names from the variables those sources loaded.
        return (
            init_settings,
            _FlatSource(settings_cls, env_settings),
            _FlatSource(settings_cls, dotenv_settings),
        )

    def with_dev_tokens(self) -> tuple[Settings, list[str]]:
        """In dev mode, fill missing tokens with fresh ones; returns lines to print."""
        notes: list[str] = []
        updates: dict[str, str] = {}
        if self.api.admin_token is None:
            updates["admin_token"] = "ka_" + secrets.token_urlsafe(24)
            notes.append(f"KRAKO_ADMIN_TOKEN={updates['admin_token']}")
        if self.api.node_join_token is None:
            updates["node_join_token"] = "kj_" + secrets.token_urlsafe(24)
            notes.append(f"KRAKO_NODE_JOIN_TOKEN={updates['node_join_token']}")
        return self.model_copy(update={"api": self.api.model_copy(update=updates)}), notes

    def require_tokens(self) -> None:
        """Refuse to start without both tokens, with equal ones (a joining node would hold the
        admin role), or with short ones outside dev mode."""
        api = self.api
        tokens = (
            ("KRAKO_ADMIN_TOKEN", api.admin_token),
            ("KRAKO_NODE_JOIN_TOKEN", api.node_join_token),
        )
        missing = [name for name, value in tokens if not value]
        if missing:
            raise SettingsError(
                f"{', '.join(missing)} not set; set them (or KRAKO_DEV=1 to generate them)"
            )
        for name, value in tokens:
            if value is not None and len(value) < 16 and not api.dev:
                raise SettingsError(f"{name} is too short (16 characters at least)")
        if api.admin_token == api.node_join_token:
            raise SettingsError("KRAKO_ADMIN_TOKEN and KRAKO_NODE_JOIN_TOKEN must differ")


# --------------------------------------------------------------------------- variables


@dataclass(frozen=True, slots=True)
class LeafSetting:
    """One setting as the environment sees it: ``path`` in ``Settings``, its variable."""

    path: tuple[str, ...]  # ("autoscaler", "webhook", "url")
    env: str  # "KRAKO_AUTOSCALER_WEBHOOK_URL"
    group: type[SettingsGroup]
    info: FieldInfo


def _env_of(group: type[SettingsGroup], name: str, info: FieldInfo) -> str:
    for meta in info.metadata:
        if isinstance(meta, Env):
            return meta.name
    return f"{group.env_prefix}{name.upper()}"


def _walk(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[LeafSetting]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, SettingsGroup):
            yield from _walk(annotation, (*path, name))
        elif issubclass(model, SettingsGroup):
            yield LeafSetting((*path, name), _env_of(model, name, info), model, info)
        else:
            raise TypeError(f"{model.__name__}.{name} is neither a group nor in one")


@cache
def leaf_settings(model: type[BaseModel] = Settings) -> tuple[LeafSetting, ...]:
    """Every setting of ``model`` with its variable, groups depth first, in field order."""
    leaves = tuple(_walk(model, ()))
    seen: dict[str, tuple[str, ...]] = {}
    for leaf in leaves:
        if leaf.env in seen:
            raise TypeError(f"{leaf.env} names both {seen[leaf.env]} and {leaf.path}")
        seen[leaf.env] = leaf.path
    return leaves


class _FlatSource(PydanticBaseSettingsSource):
    """The variables of a built-in source (environment or ``.env``), nested into groups."""

    def __init__(self, settings_cls: type[BaseSettings], loaded: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        # case-insensitive, as pydantic-settings reads them: keys are lower case
        self._vars: Mapping[str, str | None] = (
            loaded.env_vars if isinstance(loaded, EnvSettingsSource) else {}
        )

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole state

    def __call__(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for leaf in leaf_settings(self.settings_cls):
            value = self._vars.get(leaf.env.lower())
            if value is None:
                continue
            node = state
            for key in leaf.path[:-1]:
                node = node.setdefault(key, {})
            node[leaf.path[-1]] = value
        return state
