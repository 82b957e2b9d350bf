"""The control plane's settings: one class, ``KRAKO_*`` from the environment and ``.env``.

Built once in ``main()`` / ``create_app(settings)`` and passed in; never read at import time.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """The configuration is unsafe or inconsistent; the process refuses to start."""


class Settings(BaseSettings):
    """Every setting of the control plane. Each field is ``KRAKO_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="KRAKO_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    dev: bool = Field(
        default=False,
        description="Development mode: missing tokens are generated and printed at start.",
    )
    data_dir: Path = Field(default=Path("./.krako"), description="Where the SQLite file lives.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite at DATA_DIR/krako.db. "
        "postgresql://user@host/db selects PostgreSQL (psycopg 3).",
    )
    admin_token: str | None = Field(default=None, description="Bearer token of the admin role.")
    node_join_token: str | None = Field(
        default=None, description="Bearer token agents present to register."
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Request body limit.")

    lease_s: float = Field(default=30.0, gt=0, description="Claim lease length.")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="Agent heartbeat interval.")
    heartbeat_timeout_s: float = Field(
        default=30.0, gt=0, description="A node without a heartbeat this long is unhealthy."
    )
    lease_reaper_interval_s: float = Field(default=1.0, gt=0, description="Lease reaper period.")
    scheduler_sweep_interval_s: float = Field(
        default=1.0, gt=0, description="Period of the background placement sweep."
    )
    autoscaler_interval_s: float = Field(default=2.0, gt=0, description="Autoscaler period.")
    scheduler_offer_fanout: int = Field(
        default=1, ge=1, le=16, description="Offer each unit to its k best candidates."
    )
    scheduler_weight_free_capacity: float = Field(
        default=1.0, ge=0, description="Placement score weight of a node's free-slot fraction."
    )
    scheduler_weight_load: float = Field(
        default=0.5, ge=0, description="Placement score weight of low reported load."
    )
    scheduler_weight_trust: float = Field(
        default=1.0, ge=0, description="Placement score weight of the node's trust score."
    )
    scheduler_weight_region: float = Field(
        default=0.5,
        ge=0,
        description="Placement score bonus when the node is in the unit's region.",
    )
    scheduler_streak_limit: int = Field(
        default=3, ge=1, description="Max consecutive units of a session on one node."
    )

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

    autoscaler_actuator: str = Field(
        default="log", description="log | local | webhook | kubernetes"
    )
    autoscaler_min_nodes: int = Field(
        default=0, ge=0, description="The autoscaler never asks for fewer nodes."
    )
    autoscaler_max_nodes: int = Field(
        default=10, ge=0, description="The autoscaler never asks for more nodes."
    )
    autoscaler_webhook_url: str | None = Field(
        default=None, description="Where the webhook actuator POSTs scale requests."
    )
    autoscaler_webhook_secret: str | None = Field(
        default=None, description="HMAC-SHA256 key signing webhook bodies (X-Krako-Signature)."
    )
    autoscaler_min_hold_s: float = Field(
        default=30.0, ge=0, description="An admission mode holds at least this long."
    )
    autoscaler_scale_down_window_s: float = Field(
        default=120.0,
        ge=0,
        description="Scale down only after the node recommendation stayed lower this long "
        "(then to the highest recommendation of the window).",
    )
    autoscaler_scale_up_cooldown_s: float = Field(
        default=10.0, ge=0, description="Least time between two scale-up requests."
    )
    autoscaler_throttle_up_backlog_per_slot: float = Field(
        default=4.0,
        ge=0,
        description="OPEN to THROTTLED when queued units per slot reach this (while capacity "
        "is saturated).",
    )
    autoscaler_throttle_down_backlog_per_slot: float = Field(
        default=1.0, ge=0, description="THROTTLED to OPEN when queued units per slot fall below."
    )
    autoscaler_throttle_up_age_s: float = Field(
        default=120.0,
        ge=0,
        description="OPEN to THROTTLED when the oldest queued unit waited this long (while "
        "capacity is saturated).",
    )
    autoscaler_throttle_down_age_s: float = Field(
        default=30.0,
        ge=0,
        description="THROTTLED to OPEN needs the oldest queued unit younger than this.",
    )
    autoscaler_critical_up_backlog_per_slot: float = Field(
        default=16.0,
        ge=0,
        description="To CRITICAL when queued p0-p1 units per slot reach this (while capacity "
        "is saturated).",
    )
    autoscaler_critical_down_backlog_per_slot: float = Field(
        default=4.0,
        ge=0,
        description="CRITICAL to THROTTLED when queued p0-p1 units per slot fall below.",
    )
    autoscaler_critical_up_age_s: float = Field(
        default=600.0,
        ge=0,
        description="To CRITICAL when the oldest queued p0-p1 unit waited this long (while "
        "capacity is saturated).",
    )
    autoscaler_critical_down_age_s: float = Field(
        default=120.0,
        ge=0,
        description="CRITICAL to THROTTLED needs the oldest queued p0-p1 unit younger than this.",
    )
    autoscaler_saturated_utilization: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Modes go up only while utilization (busy / total slots) is at least this.",
    )
    autoscaler_idle_utilization: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Below this utilization a restrictive mode steps down (it must not leave "
        "capacity idle).",
    )
    autoscaler_idle_hold_s: float = Field(
        default=5.0,
        ge=0,
        description="Utilization must stay below the idle threshold this long before a "
        "restrictive mode steps down (one idle sample between two units is noise).",
    )
    autoscaler_target_utilization: float = Field(
        default=0.8, gt=0, le=1, description="Utilization the node count aims at."
    )
    autoscaler_target_backlog_per_slot: float = Field(
        default=1.0, ge=0, description="Queued units per slot the node count tolerates."
    )
    autoscaler_slots_per_node: int = Field(
        default=4,
        ge=1,
        description="Slots a new node is assumed to bring while no healthy node tells.",
    )
    autoscaler_local_control_plane_url: str = Field(
        default="http://127.0.0.1:8080",
        description="local actuator: the URL its agents use to reach this control plane.",
    )
    autoscaler_local_agent_args: str = Field(
        default="",
        description="local actuator: extra krako-agent arguments, shell-quoted "
        "(for example '--max-concurrency 2 --kinds cpu').",
    )
    autoscaler_local_stop_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="local actuator: on shutdown, how long its agents may take to exit after "
        "SIGTERM before they are killed.",
    )
    autoscaler_k8s_deployment: str = Field(
        default="krako-agent",
        description="kubernetes actuator: the agent Deployment whose replicas it sets.",
    )
    autoscaler_k8s_namespace: str | None = Field(
        default=None,
        description="kubernetes actuator: the Deployment's namespace (default: the pod's own).",
    )
    autoscaler_k8s_api_url: str | None = Field(
        default=None,
        description="kubernetes actuator: API server URL (default: the in-cluster service).",
    )
    autoscaler_webhook_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="webhook and kubernetes actuators: timeout of one attempt.",
    )
    autoscaler_webhook_retries: int = Field(
        default=4,
        ge=0,
        le=20,
        description="webhook and kubernetes actuators: retries after a failed attempt.",
    )
    autoscaler_webhook_backoff_s: float = Field(
        default=0.5,
        gt=0,
        description="webhook and kubernetes actuators: first retry delay (doubled at each "
        "retry, jittered).",
    )

    db_pool_size: int = Field(
        default=10, ge=1, description="Database connections kept open per control-plane process."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'krako.db').resolve()}"

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith("postgresql")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.bill_llm_from_workunit_completed and self.bill_llm_from_invocation:
            raise SettingsError(
                "KRAKO_BILL_LLM_FROM_WORKUNIT_COMPLETED=1 and KRAKO_BILL_LLM_FROM_INVOCATION=1 "
                "would bill every LLM token twice; turn one of them off"
            )
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError("KRAKO_HEARTBEAT_TIMEOUT_S must exceed KRAKO_HEARTBEAT_INTERVAL_S")
        return self

    def with_dev_tokens(self) -> tuple[Settings, list[str]]:
        """In dev mode, fill missing tokens with fresh ones; returns lines to print."""
        notes: list[str] = []
        updates: dict[str, str] = {}
        if self.admin_token is None:
            updates["admin_token"] = "ka_" + secrets.token_urlsafe(24)
            notes.append(f"KRAKO_ADMIN_TOKEN={updates['admin_token']}")
        if self.node_join_token is None:
            updates["node_join_token"] = "kj_" + secrets.token_urlsafe(24)
            notes.append(f"KRAKO_NODE_JOIN_TOKEN={updates['node_join_token']}")
        return self.model_copy(update=updates), notes

    def require_tokens(self) -> None:
        missing = [
            name
            for name, value in (
                ("KRAKO_ADMIN_TOKEN", self.admin_token),
                ("KRAKO_NODE_JOIN_TOKEN", self.node_join_token),
            )
            if not value
        ]
        if missing:
            raise SettingsError(
                f"{', '.join(missing)} not set; set them (or KRAKO_DEV=1 to generate them)"
            )
        for name, value in (
            ("KRAKO_ADMIN_TOKEN", self.admin_token),
            ("KRAKO_NODE_JOIN_TOKEN", self.node_join_token),
        ):
            if value is not None and len(value) < 16 and not self.dev:
                raise SettingsError(f"{name} is too short (16 characters at least)")
