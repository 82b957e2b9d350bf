"""The ``cpu`` executor: named handlers, run in worker threads with their CPU time measured.

A handler is a function ``handler(args: dict) -> JSON-able result``; it may also accept a
keyword parameter ``ctx`` to receive a :class:`HandlerContext` (unit id, attempt, and a
``cancelled`` event to check in long loops). Async functions are accepted too (each run gets
its own event loop in the worker thread).

Handlers come from, in increasing precedence: the built-ins (``noop``, ``sleep``,
``sha256``), the ``krako.handlers`` entry-point group of installed packages, and
``--handler name=module:function``.

Failures: an unknown handler or a payload that breaks the ``cpu`` schema (``shared.payloads``,
the one the control plane checks at submit) is a non-retryable failure; a handler that raises
fails the attempt as retryable, unless it raised :class:`~node_agent.errors.NonRetryableError`.

CPU time is the worker thread's own CPU time (``time.thread_time``) around the handler, so
concurrent units do not inflate each other's bill. ``noop`` runs inline on the event loop:
handing it to a thread would cost far more than the work (measured on a 2-core box: a
``run_in_executor`` round trip 50-75 us, the inline call under 1 us).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from node_agent.errors import (
    ConfigError,
    ExecutionError,
    HandlerError,
    InvalidPayloadError,
    UnknownHandlerError,
)
from node_agent.executors.base import Job, Success, cpu_ms, parse_unit_payload
from node_agent.logs import log_event
from shared.enums import WorkUnitKind

ENTRY_POINT_GROUP = "krako.handlers"
SHA256_MAX_ROUNDS = 100_000_000
_CANCEL_CHECK_EVERY = 4096


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler may want to know about the attempt it runs."""

    unit_id: str
    attempt: int
    cancelled: Any  # threading.Event; typed loosely so handlers need not import threading


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler: how to call it and where to run it."""

    name: str
    func: Callable[..., Any]
    wants_ctx: bool = False
    is_async: bool = False
    inline: bool = False

    def call(self, args: dict[str, Any], ctx: HandlerContext) -> Any:
        """Run the handler in the calling thread."""
        if self.is_async:
            coro = self.func(args, ctx=ctx) if self.wants_ctx else self.func(args)
            return asyncio.run(coro)
        return self.func(args, ctx=ctx) if self.wants_ctx else self.func(args)


def make_handler(name: str, func: Callable[..., Any], *, inline: bool = False) -> Handler:
    """Wrap ``func`` as a handler, checking that it can be called as ``func(args)``."""
    if not callable(func):
        raise ConfigError(f"handler {name!r}: {func!r} is not callable")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"handler {name!r}: cannot inspect {func!r}: {exc}") from exc
    wants_ctx = "ctx" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    try:
        if wants_ctx:
            signature.bind({}, ctx=None)
        else:
            signature.bind({})
    except TypeError as exc:
        raise ConfigError(
            f"handler {name!r}: {func!r} must accept one positional argument (args) "
            f"and optionally the keyword ctx: {exc}"
        ) from exc
    return Handler(
        name=name,
        func=func,
        wants_ctx=wants_ctx,
        is_async=inspect.iscoroutinefunction(func),
        inline=inline,
    )


# --------------------------------------------------------------------------- built-ins


def _noop(args: dict[str, Any]) -> dict[str, Any]:
    return {}


def _sleep(args: dict[str, Any], *, ctx: HandlerContext) -> dict[str, Any]:
    ms = args.get("ms", 0)
    if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
        raise InvalidPayloadError(f"sleep: args.ms must be a number >= 0, got {ms!r}")
    ctx.cancelled.wait(ms / 1000)
    return {"slept_ms": ms}


def sha256_rounds(data: str, rounds: int, cancelled: Any = None) -> str:
    """Hash the UTF-8 ``data``, then the digest bytes again, ``rounds`` times in all."""
    digest = hashlib.sha256(data.encode("utf-8")).digest()
    sha = hashlib.sha256
    for done in range(1, rounds):
        if cancelled is not None and done % _CANCEL_CHECK_EVERY == 0 and cancelled.is_set():
            raise HandlerError("sha256: cancelled", code="cancelled")
        digest = sha(digest).digest()
    return digest.hex()


def _sha256(args: dict[str, Any], *, ctx: HandlerContext) -> dict[str, Any]:
    data = args.get("data", "")
    rounds = args.get("rounds", 1)
    if not isinstance(data, str):
        raise InvalidPayloadError(f"sha256: args.data must be a string, got {type(data).__name__}")
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise InvalidPayloadError(f"sha256: args.rounds must be an integer, got {rounds!r}")
    if not 1 <= rounds <= SHA256_MAX_ROUNDS:
        raise InvalidPayloadError(f"sha256: args.rounds must be 1..{SHA256_MAX_ROUNDS}")
    return {"digest": sha256_rounds(data, rounds, ctx.cancelled)}


BUILTINS: dict[str, Handler] = {
    "noop": make_handler("noop", _noop, inline=True),
    "sleep": make_handler("sleep", _sleep),
    "sha256": make_handler("sha256", _sha256),
}


# --------------------------------------------------------------------------- loading


def load_object(target: str) -> Any:
    """Import ``module:attr.path`` and return the object."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"{target!r} is not module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for handler {target!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"{module_name!r} has no {attr_path!r}") from exc
    return obj


def build_registry(
    specs: Iterable[tuple[str, str]] = (), *, use_entry_points: bool = True
) -> dict[str, Handler]:
    """Built-ins, then the ``krako.handlers`` entry points, then ``specs`` (name, target)."""
    registry = dict(BUILTINS)
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                func = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"entry point {ep.name}={ep.value} failed to load: {exc}"
                ) from exc
            if ep.name in BUILTINS:
                log_event("handler_overrides_builtin", 30, handler=ep.name, source=ep.value)
            registry[ep.name] = make_handler(ep.name, func)
    for name, target in specs:
        if name in BUILTINS:
            log_event("handler_overrides_builtin", 30, handler=name, source=target)
        registry[name] = make_handler(name, load_object(target))
    return registry


# --------------------------------------------------------------------------- executor


class _ThreadCount:
    """How many worker threads are inside a handler right now (across executors)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, delta: int) -> None:
        """Count threads entering (+1) or leaving (-1) a handler."""
        with self._lock:
            self.value += delta


_BUSY = _ThreadCount()


def busy_handler_threads() -> int:
    """Worker threads still running a handler: ones that ignored cancellation keep the
    process alive at exit, so ``main`` leaves without waiting for them."""
    return _BUSY.value


def _run_timed(handler: Handler, args: dict[str, Any], ctx: HandlerContext) -> tuple[Any, int]:
    start = time.thread_time()
    try:
        result = handler.call(args, ctx)
    except ExecutionError:
        raise
    except Exception as exc:
        raise HandlerError(f"handler {handler.name!r} raised {type(exc).__name__}: {exc}") from exc
    return result, cpu_ms(time.thread_time() - start)


def _run_in_worker(handler: Handler, args: dict[str, Any], ctx: HandlerContext) -> tuple[Any, int]:
    _BUSY.add(1)
    try:
        return _run_timed(handler, args, ctx)
    finally:
        _BUSY.add(-1)


class CpuExecutor:
    """Runs ``cpu`` units: ``{"handler": name, "args": {...}}``."""

    kind = WorkUnitKind.CPU

    def __init__(self, handlers: Mapping[str, Handler], *, max_workers: int) -> None:
        self.handlers = dict(handlers)
        # Own pool sized for our concurrency: the default executor is capped at 32 threads and
        # shared with everything else in the process.
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="krako-cpu")

    async def execute(self, job: Job) -> Success:
        """Run the unit's handler and measure its CPU time."""
        payload = parse_unit_payload(WorkUnitKind.CPU, job.unit.payload)
        handler = self.handlers.get(payload.handler)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            raise UnknownHandlerError(
                f"unknown handler {payload.handler!r} (this agent has: {known})"
            )
        args = payload.args
        ctx = HandlerContext(unit_id=job.unit.id, attempt=job.attempt, cancelled=job.cancelled)
        if handler.inline:
            result, used_ms = _run_timed(handler, args, ctx)
        else:
            loop = asyncio.get_running_loop()
            result, used_ms = await loop.run_in_executor(
                self._pool, _run_in_worker, handler, args, ctx
            )
        return Success(result=result, cpu_ms=used_ms)

    async def aclose(self) -> None:
        """Stop the worker threads (threads still running a handler are not waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
