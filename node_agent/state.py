"""The agent's local state: the node id it keeps across restarts.

Layout: a state dir holds ``node_id`` (the id the control plane knows this node by) and
``lock`` (held with ``flock`` while the agent runs). With no state dir configured, agents
share ``./.krako/agent`` and each takes the first free ``slot-<n>`` under it: a restarted
agent gets its old slot (and node id) back, while two agents started side by side never
share an id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from node_agent.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one agent per dir
    fcntl = None  # type: ignore[assignment]

DEFAULT_BASE = Path(".krako") / "agent"
MAX_SLOTS = 1024


def _try_lock(directory: Path) -> IO[str] | None:
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / "lock", "a+", encoding="utf-8")  # noqa: SIM115 - held open
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


class NodeState:
    """A locked state dir and the node id stored in it."""

    def __init__(self, directory: Path, lock: IO[str] | None) -> None:
        self.directory = directory
        self._lock = lock

    @classmethod
    def acquire(cls, state_dir: Path | None) -> NodeState:
        """Lock ``state_dir``, or the first free slot under the default base when it is None.

        Raises ``ConfigError`` when an explicit state dir is locked by another running agent.
        """
        if state_dir is not None:
            lock = _try_lock(state_dir)
            if lock is None:
                raise ConfigError(f"state dir {state_dir} is in use by another running agent")
            return cls(state_dir, lock)
        for slot in range(MAX_SLOTS):
            directory = DEFAULT_BASE / f"slot-{slot}"
            lock = _try_lock(directory)
            if lock is not None:
                return cls(directory, lock)
        raise ConfigError(f"all {MAX_SLOTS} agent slots under {DEFAULT_BASE} are in use")

    @property
    def node_id_path(self) -> Path:
        """The file that holds the node id."""
        return self.directory / "node_id"

    def load_node_id(self) -> str | None:
        """The node id saved by an earlier run, if any."""
        try:
            value = self.node_id_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value or None

    def save_node_id(self, node_id: str) -> None:
        """Keep ``node_id`` for the next run (written atomically)."""
        if self.load_node_id() == node_id:
            return
        tmp = self.directory / "node_id.tmp"
        tmp.write_text(node_id + "\n", encoding="utf-8")
        os.replace(tmp, self.node_id_path)

    def release(self) -> None:
        """Unlock the state dir (the process exiting does it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
