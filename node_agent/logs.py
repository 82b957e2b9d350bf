"""Structured logs: one line per event, as ``key=value`` pairs or JSON lines.

Call :func:`log_event` with an event name (``registered``, ``claimed``, ``completed``,
``failed``, ``revoked``, ``waiting_for_control_plane``, ...) and fields; the formatter puts
``ts``, ``level`` and ``event`` first. Lines go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "krako.agent"
_FIELDS = "krako_fields"

logger = logging.getLogger(LOGGER_NAME)


def log_event(event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log one structured event (cheap when the level is disabled)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info event=claimed unit=wu_1 attempt=1``."""

    def format(self, record: logging.LogRecord) -> str:
        """One ``key=value`` line."""
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"event={_kv_value(record.getMessage())}",
        ]
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        parts.extend(f"{key}={_kv_value(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_kv_value(self.formatException(record.exc_info))}")
        if record.name != LOGGER_NAME:
            parts.append(f"logger={record.name}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``{"ts": ..., "level": ..., "event": ..., ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object."""
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        data.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.name != LOGGER_NAME:
            data["logger"] = record.name
        return json.dumps(data, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Send the agent's logs (and warnings of libraries) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logger.setLevel(level)
