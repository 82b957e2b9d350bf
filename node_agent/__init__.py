"""Krako node agent: register, heartbeat, long-poll, claim, execute, report.

Run it as ``krako-agent`` or ``python -m node_agent`` (``--help`` lists every flag and its
``KRAKO_*`` variable). It talks to the control plane only through :mod:`node_agent.client`.
"""

from __future__ import annotations

from node_agent.errors import NonRetryableError

__all__ = ["NonRetryableError"]
