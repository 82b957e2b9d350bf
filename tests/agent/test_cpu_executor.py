"""The cpu executor: built-in handlers, failures, custom handlers, CPU time."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from node_agent.errors import (
    ConfigError,
    ExecutionError,
    HandlerError,
    InvalidPayloadError,
    NonRetryableError,
    UnknownHandlerError,
)
from node_agent.executors.base import Job, Success
from node_agent.executors.cpu import (
    BUILTINS,
    CpuExecutor,
    build_registry,
    make_handler,
    sha256_rounds,
)
from shared.wire import WorkUnit
from tests.agent.agent_fakes import unit_json


def job(payload: dict[str, Any], unit_id: str = "wu_1") -> Job:
    return Job(unit=WorkUnit.model_validate(unit_json(unit_id, "cpu", payload)), attempt=1)


def run(executor: CpuExecutor, payload: dict[str, Any]) -> Success:
    async def go() -> Success:
        try:
            return await executor.execute(job(payload))
        finally:
            await executor.aclose()

    return asyncio.run(go())


def executor(**handlers: Any) -> CpuExecutor:
    registry = dict(BUILTINS)
    registry.update({name: make_handler(name, func) for name, func in handlers.items()})
    return CpuExecutor(registry, max_workers=2)


def reference_sha(data: str, rounds: int) -> str:
    digest = hashlib.sha256(data.encode("utf-8")).digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@pytest.mark.parametrize(
    ("data", "rounds"), [("hello", 1), ("hello", 2), ("", 3), ("zürich ✓", 1000)]
)
def test_sha256_matches_hashlib(data: str, rounds: int) -> None:
    result = run(executor(), {"handler": "sha256", "args": {"data": data, "rounds": rounds}})
    assert result.result == {"digest": reference_sha(data, rounds)}
    assert isinstance(result.cpu_ms, int)


def test_sha256_one_round_is_the_plain_digest() -> None:
    assert sha256_rounds("hello", 1) == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize(
    "args",
    [{"data": 5}, {"data": "x", "rounds": 0}, {"data": "x", "rounds": "3"}, {"rounds": True}],
)
def test_sha256_bad_args_are_not_retryable(args: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError) as info:
        run(executor(), {"handler": "sha256", "args": args})
    assert info.value.retryable is False


def test_cpu_time_is_measured_for_real() -> None:
    # 300k rounds is tens of ms of CPU on any machine; sleeping is (almost) none.
    busy = run(executor(), {"handler": "sha256", "args": {"data": "x", "rounds": 300_000}})
    idle = run(executor(), {"handler": "sleep", "args": {"ms": 200}})
    assert busy.cpu_ms >= 10
    assert idle.cpu_ms < 20 and idle.result == {"slept_ms": 200}


def test_noop_runs_inline_without_a_thread_hop() -> None:
    seen: list[str] = []

    def probe(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return {}

    ex = executor()
    ex.handlers["probe"] = make_handler("probe", probe, inline=True)
    ex.handlers["threaded"] = make_handler("threaded", probe)
    run(ex, {"handler": "probe"})
    ex2 = executor()
    ex2.handlers["threaded"] = make_handler("threaded", probe)
    run(ex2, {"handler": "threaded"})
    assert seen[0] == threading.current_thread().name
    assert seen[1].startswith("krako-cpu")
    assert BUILTINS["noop"].inline and not BUILTINS["sha256"].inline


def test_unknown_handler_is_a_clear_non_retryable_failure() -> None:
    with pytest.raises(UnknownHandlerError) as info:
        run(executor(), {"handler": "does-not-exist"})
    error = info.value
    assert error.retryable is False
    assert error.to_wire() == {
        "code": "unknown_handler",
        "message": "unknown handler 'does-not-exist' (this agent has: noop, sha256, sleep)",
        "retryable": False,
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "cpu payload needs 'handler', a non-empty string"),
        ({"handler": ""}, "cpu payload 'handler' must be a non-empty string"),
        ({"handler": " "}, "cpu payload 'handler' must be a non-empty string"),
        ({"handler": 3}, "cpu payload 'handler' must be a non-empty string"),
        ({"handler": "noop", "args": [1]}, "cpu payload 'args' must be an object"),
        ({"handler": "noop", "args": None}, "cpu payload 'args' must be an object"),
        (
            {"handler": "noop", "timeout_s": "5"},
            "cpu payload 'timeout_s' must be a positive number",
        ),
    ],
)
def test_malformed_payload_is_not_retryable(payload: dict[str, Any], message: str) -> None:
    # the schema and the messages are the control plane's own (shared.payloads)
    with pytest.raises(InvalidPayloadError) as info:
        run(executor(), payload)
    assert info.value.retryable is False
    assert info.value.message == message


def test_handler_gets_the_args_and_extra_keys_do_not_matter() -> None:
    seen: list[dict[str, Any]] = []

    def probe(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"ok": True}

    result = run(executor(probe=probe), {"handler": "probe", "args": {"x": [1]}, "note": "n"})
    assert result.result == {"ok": True} and seen == [{"x": [1]}]
    run(executor(probe=probe), {"handler": "probe"})
    assert seen[-1] == {}


def test_raising_handler_is_retryable_unless_it_says_otherwise() -> None:
    def boom(args: dict[str, Any]) -> None:
        raise ValueError("bad luck")

    def refuse(args: dict[str, Any]) -> None:
        raise NonRetryableError("this input can never work")

    with pytest.raises(HandlerError) as info:
        run(executor(boom=boom), {"handler": "boom"})
    assert info.value.retryable is True
    assert "ValueError: bad luck" in info.value.message
    with pytest.raises(ExecutionError) as refused:
        run(executor(refuse=refuse), {"handler": "refuse"})
    assert refused.value.retryable is False
    assert refused.value.to_wire()["message"] == "this input can never work"


def test_handlers_get_context_and_async_handlers_work() -> None:
    def with_ctx(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"unit": ctx.unit_id, "attempt": ctx.attempt, "n": args["n"]}

    async def coro(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"double": args["n"] * 2}

    assert run(executor(h=with_ctx), {"handler": "h", "args": {"n": 1}}).result == {
        "unit": "wu_1",
        "attempt": 1,
        "n": 1,
    }
    assert run(executor(c=coro), {"handler": "c", "args": {"n": 21}}).result == {"double": 42}


def test_cancelled_job_stops_cooperative_builtins() -> None:
    async def go() -> float:
        ex = executor()
        j = job({"handler": "sleep", "args": {"ms": 10_000}})
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.05, j.cancelled.set)
        await ex.execute(j)
        await ex.aclose()
        return loop.time() - started

    assert asyncio.run(go()) < 2.0


def test_handler_specs_load_module_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_handlers.py").write_text(
        "def double(args):\n    return {'value': args['x'] * 2}\n"
        "class Box:\n    @staticmethod\n    def triple(args):\n        return args['x'] * 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = build_registry(
        [("double", "my_handlers:double"), ("triple", "my_handlers:Box.triple")],
        use_entry_points=False,
    )
    ex = CpuExecutor(registry, max_workers=1)
    assert run(ex, {"handler": "double", "args": {"x": 4}}).result == {"value": 8}
    ex = CpuExecutor(registry, max_workers=1)
    assert run(ex, {"handler": "triple", "args": {"x": 4}}).result == 12


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:f", "cannot import"),
        ("my_bad:missing", "has no"),
        ("my_bad:not_callable", "not callable"),
        ("my_bad:no_args", "one positional argument"),
    ],
)
def test_bad_handler_specs_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, message: str
) -> None:
    (tmp_path / "my_bad.py").write_text("not_callable = 3\ndef no_args():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        build_registry([("h", target)], use_entry_points=False)


def test_entry_point_group_registers_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny installed distribution that declares a krako.handlers entry point.
    (tmp_path / "ep_handlers.py").write_text("def shout(args):\n    return args['s'].upper()\n")
    dist = tmp_path / "krako_ep_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: krako-ep-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[krako.handlers]\nshout = ep_handlers:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = build_registry()
    assert "shout" in registry
    assert (
        run(CpuExecutor(registry, max_workers=1), {"handler": "shout", "args": {"s": "hi"}}).result
        == "HI"
    )
    # --handler specs win over entry points of the same name.
    (tmp_path / "ep_override.py").write_text("def shout(args):\n    return 'overridden'\n")
    registry = build_registry([("shout", "ep_override:shout")])
    assert (
        run(CpuExecutor(registry, max_workers=1), {"handler": "shout", "args": {}}).result
        == "overridden"
    )
    sys.modules.pop("ep_handlers", None)
