"""A handler the test holds open: ``hold`` blocks until the test releases its gate.

What the agent does while a unit runs (a stop, a revocation, its last poll) is then judged by
what happened in which order, not by how long a sleeping handler took. ``hold`` ignores
cancellation, like a handler stuck in a C call: only its gate (or ``max_s``) ends it.

    gate = gates("slow")  # the fixture (tests/agent/conftest.py)
    fake.submit("wu_1", payload={"handler": "hold", "args": {"gate": "slow"}})
    settings = make_settings(agent_handlers=[HOLD])
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

HOLD = "hold=tests.agent.gated_handlers:hold"
MAX_HOLD_S = 30.0  # a forgotten gate still lets the thread end


@dataclass
class Gate:
    entered: threading.Event = field(default_factory=threading.Event)  # the handler runs
    released: threading.Event = field(default_factory=threading.Event)  # the test let it go
    returned: threading.Event = field(default_factory=threading.Event)  # the handler is done


GATES: dict[str, Gate] = {}


def hold(args: dict[str, Any]) -> dict[str, Any]:
    gate = GATES[args["gate"]]
    gate.entered.set()
    released = gate.released.wait(float(args.get("max_s", MAX_HOLD_S)))
    gate.returned.set()
    return {"released": released}
