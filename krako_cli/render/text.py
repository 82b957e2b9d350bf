"""Small building blocks of the renderers: compact JSON, key/value grids, clock times."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text


def compact(value: Any, limit: int = 200) -> str:
    """``value`` as one line of JSON, cut with an ellipsis past ``limit`` characters."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fields(rows: list[tuple[str, str | Text]]) -> Table:
    """A borderless two-column grid: bold keys, values folded when long."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def clock(moment: datetime) -> str:
    """The time of day to the millisecond (``12:00:01.123``)."""
    return moment.strftime("%H:%M:%S.%f")[:-3]
