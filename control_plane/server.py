"""``krako-control-plane``: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from control_plane.app import create_app
from control_plane.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="krako-control-plane",
        description="Run the Krako control plane (settings from KRAKO_* and .env).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off by default)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        settings = Settings()
        if settings.api.dev:
            settings, notes = settings.with_dev_tokens()
            for line in notes:
                print(f"krako dev mode: {line}", flush=True)
        settings.require_tokens()
        app = create_app(settings)  # builds the autoscaler's actuator: checks its settings
    except (SettingsError, ValueError) as exc:
        print(f"krako-control-plane: configuration error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
