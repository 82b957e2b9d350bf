"""The ``log`` actuator (the default): a log line per scale request, nothing else."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from control_plane.db.engine import Database
from control_plane.settings import Settings

if TYPE_CHECKING:
    from control_plane.capacity.actuators import ScaleAction

log = logging.getLogger("krako.autoscaler")


class LogActuator:
    """Only a log line per scale request: the log of events is the whole effect."""

    name = "log"

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        if request is not None:
            log.info(
                "scale requested: %d -> %d nodes (%s) [event %s, seq %d]",
                request.from_nodes,
                request.to_nodes,
                request.reason,
                request.event_id,
                request.seq,
            )

    def close(self) -> None:
        return None


def from_settings(settings: Settings, db: Database) -> LogActuator:
    """``KRAKO_AUTOSCALER_ACTUATOR=log``: needs nothing."""
    return LogActuator()
