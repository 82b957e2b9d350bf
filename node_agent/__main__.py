"""``python -m node_agent``: the same as ``krako-agent``."""

from __future__ import annotations

import sys

from node_agent.main import main

if __name__ == "__main__":
    sys.exit(main())
