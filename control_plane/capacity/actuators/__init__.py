"""Actuators: what turns the autoscaler's desired node count into machines.

The tick decides and commits (``capacity.scale.requested`` is in the log before anything
happens); the replica that led the tick then calls its actuator, outside the transaction::

    actuator.actuate(desired_nodes, request)   # request: the scale request of this tick, or None

An actuator never raises into the loop: failures are logged and tried again later (the local
actuator reconciles at every tick, the webhook one re-delivers with the next scale request).

``KRAKO_AUTOSCALER_ACTUATOR`` names one from :data:`ACTUATORS`, a registry from a name to a
factory ``(settings, db) -> Actuator`` that checks its own settings:

- ``log`` (default, ``log.py``): a log line per scale request; the events are the whole effect.
- ``local`` (``local.py``): starts and stops ``krako-agent`` processes on this machine (node
  ids ``local-<n>``). Scale-down drains a node (no new placements), waits until it holds
  nothing, then sends SIGTERM, so no unit is cut off. Every agent it started is stopped on
  shutdown.
- ``webhook`` (``webhook.py``): POSTs each scale request as JSON to a URL, signed with
  HMAC-SHA256 (``X-Krako-Signature: sha256=<hex>`` over the exact body), with retries and
  jittered exponential backoff, from a worker thread so a slow receiver never delays a tick.
- ``kubernetes`` (``kubernetes.py``): sets the agent Deployment's replicas through its scale
  subresource, with the pod's ServiceAccount (deploy/k8s/rbac.yaml), the same way (worker
  thread and retries: ``delivery.py``, shared with the webhook).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from control_plane.capacity.actuators import kubernetes, local, log, webhook
from control_plane.capacity.actuators.kubernetes import KubernetesActuator
from control_plane.capacity.actuators.local import LocalActuator
from control_plane.capacity.actuators.log import LogActuator
from control_plane.capacity.actuators.webhook import WebhookActuator, sign
from control_plane.db.engine import Database
from control_plane.eventlog.store import us_to_dt
from control_plane.settings import Settings, SettingsError

__all__ = [
    "ACTUATORS",
    "Actuator",
    "ActuatorFactory",
    "KubernetesActuator",
    "LocalActuator",
    "LogActuator",
    "ScaleAction",
    "WebhookActuator",
    "build_actuator",
    "sign",
]


@dataclass(frozen=True, slots=True)
class ScaleAction:
    """A committed ``capacity.scale.requested`` event, as actuators see it."""

    event_id: str
    seq: int
    from_nodes: int
    to_nodes: int
    reason: str
    inputs: dict[str, Any]
    requested_at_us: int

    def body(self) -> dict[str, Any]:
        """The webhook body: the event's payload plus where it sits in the log."""
        return {
            "type": "capacity.scale.requested",
            "event_id": self.event_id,
            "seq": self.seq,
            "requested_at": us_to_dt(self.requested_at_us).isoformat().replace("+00:00", "Z"),
            "from": self.from_nodes,
            "to": self.to_nodes,
            "reason": self.reason,
            "inputs": self.inputs,
        }


class Actuator(Protocol):
    """Turns the desired node count into action; called after each tick this replica led."""

    name: str

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        """``request`` is the scale request that tick appended, if any."""

    def close(self) -> None:
        """Stop what the actuator runs (the app is shutting down)."""


ActuatorFactory = Callable[[Settings, Database], Actuator]
"""Builds an actuator from the settings; raises :class:`SettingsError` on a bad setup."""

ACTUATORS: Mapping[str, ActuatorFactory] = MappingProxyType(
    {
        "log": log.from_settings,
        "local": local.from_settings,
        "webhook": webhook.from_settings,
        "kubernetes": kubernetes.from_settings,
    }
)


def build_actuator(settings: Settings, db: Database) -> Actuator:
    """The actuator ``KRAKO_AUTOSCALER_ACTUATOR`` names (SettingsError, a ValueError, explains
    a bad setup: an unknown name, or a setting the named actuator needs)."""
    name = settings.autoscaler.actuator
    factory = ACTUATORS.get(name.strip().lower())
    if factory is None:
        raise SettingsError(
            f"KRAKO_AUTOSCALER_ACTUATOR={name!r}: expected one of {', '.join(ACTUATORS)}"
        )
    return factory(settings, db)
