"""``krako-agent`` / ``python -m node_agent``: parse flags, build settings once, run."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from node_agent.agent import Agent
from node_agent.cli import build_parser, settings_from_args
from node_agent.client import ControlPlaneClient, Transport
from node_agent.errors import ConfigError
from node_agent.executors import build_executors
from node_agent.executors.cpu import busy_handler_threads
from node_agent.logs import configure_logging, log_event
from node_agent.settings import AgentSettings
from node_agent.state import NodeState

EXIT_CONFIG = 2


async def run_agent(settings: AgentSettings, *, transport: Transport | None = None) -> int:
    """Run one agent until it stops; SIGTERM and SIGINT ask it to stop. Returns the exit code.

    ``transport`` replaces the network (tests use ``httpx.MockTransport``).
    """
    state = None if settings.node_id else NodeState.acquire(settings.agent_state_dir)
    try:
        executors = build_executors(settings)
        client = ControlPlaneClient(
            settings.control_plane_url,
            http_timeout_s=settings.http_timeout_s,
            poll_timeout_margin_s=settings.poll_timeout_margin_s,
            max_connections=settings.max_concurrency + 8,
            transport=transport,
        )
        agent = Agent(settings, client, executors, state)
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, agent.request_stop, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        try:
            return await agent.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await agent.aclose()
            if agent.fatal is not None:
                log_event("fatal", logging.ERROR, error=str(agent.fatal))
    finally:
        if state is not None:
            state.release()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``krako-agent``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"krako-agent: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    if settings.node_join_token is None:
        print(
            "krako-agent: a join token is needed: --join-token or KRAKO_NODE_JOIN_TOKEN",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        code = asyncio.run(run_agent(settings))
    except ConfigError as exc:
        log_event("config_error", logging.ERROR, error=str(exc))
        return EXIT_CONFIG
    stuck = busy_handler_threads()
    if stuck:
        # Python joins worker threads at exit; a handler that ignores cancellation would hold
        # the process past its grace period. Its unit was already failed (or revoked).
        log_event("exit_abandoning_handler_threads", logging.WARNING, threads=stuck)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
