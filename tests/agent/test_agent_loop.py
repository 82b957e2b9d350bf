"""The agent loop against a scripted control plane (httpx.MockTransport): register, poll
with claims, execute, report; outages, 401s, revocations, shutdown and ``--polls``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from node_agent.agent import Agent
from node_agent.client import ControlPlaneClient
from node_agent.executors import build_executors
from node_agent.llm.base import LlmRequest
from node_agent.llm.stub import stub_completion
from node_agent.settings import AgentSettings
from node_agent.state import NodeState
from tests.agent.agent_fakes import LOSE_REPLY, FakeControlPlane, problem
from tests.agent.gated_handlers import HOLD, Gate

pytestmark = pytest.mark.timeout(30)

Settings = Callable[..., AgentSettings]
Gates = Callable[[str], Gate]


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The agent's log records of ``event``, in order."""
    return [r for r in caplog.records if r.getMessage() == event]


def fields(record: logging.LogRecord) -> dict[str, object]:
    return dict(record.krako_fields)  # type: ignore[attr-defined]


@asynccontextmanager
async def running(
    settings: AgentSettings, fake: FakeControlPlane
) -> AsyncIterator[tuple[Agent, asyncio.Task[int]]]:
    """An agent running against ``fake``; stopped (if still running) and closed on exit."""
    state = None if settings.node_id else NodeState.acquire(settings.agent_state_dir)
    client = ControlPlaneClient(
        settings.control_plane_url,
        http_timeout_s=settings.http_timeout_s,
        transport=fake.transport(),
    )
    agent = Agent(settings, client, build_executors(settings), state)
    task = asyncio.create_task(agent.run())
    try:
        yield agent, task
    finally:
        if not task.done():
            agent.request_stop("test over")
            await asyncio.wait_for(task, 10)
        await agent.aclose()
        if state is not None:
            state.release()


async def stop(agent: Agent, task: asyncio.Task[int]) -> int:
    agent.request_stop("test")
    return await asyncio.wait_for(task, 10)


def sha(data: str, rounds: int) -> str:
    digest = hashlib.sha256(data.encode()).digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def request_paths(fake: FakeControlPlane, suffix: str) -> list[str]:
    return [path for _, path, _ in fake.requests if path.endswith(suffix)]


# --------------------------------------------------------------------------- happy path


def test_registers_claims_a_batch_in_one_poll_and_completes(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    settings = make_settings(max_concurrency=4, region="eu-west", agent_labels={"gpu": "no"})
    for i in range(3):
        fake.submit(
            f"wu_{i}", payload={"handler": "sha256", "args": {"data": f"d{i}", "rounds": 5}}
        )
    fake.submit("wu_noop")

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: len(fake.terminal) == 4)
            return await stop(agent, task)

    assert asyncio.run(scenario()) == 0
    reg = fake.registrations[0]
    assert reg["supported_kinds"] == ["cpu", "llm_pod"]
    assert reg["max_concurrency"] == 4 and reg["region"] == "eu-west"
    assert reg["labels"] == {"gpu": "no"} and reg["node_id"] is None
    # One poll claimed all four: the fast path.
    first = fake.polls[0]
    assert first == {"max_units": 4, "wait_s": 0.2, "claim": True}
    assert all(p["max_units"] <= 4 for p in fake.polls)
    for i in range(3):
        [done] = fake.completions[f"wu_{i}"]
        assert done["result"] == {"digest": sha(f"d{i}", 5)}
        assert done["claim_token"] == f"ct-wu_{i}-1"
        assert isinstance(done["cpu_ms"], int) and done["cpu_ms"] >= 0
    assert fake.completions["wu_noop"][0]["result"] == {}
    assert not fake.failures and not fake.stale_reports
    # The node id the control plane assigned is kept for the next run.
    assert (Path(settings.agent_state_dir or "") / "node_id").read_text().strip() == "node-1"


def test_node_id_is_kept_across_restarts(make_settings: Settings) -> None:
    settings = make_settings(polls=1, poll_wait_s=0.0)

    async def once(fake: FakeControlPlane) -> None:
        async with running(settings, fake) as (_, task):
            assert await asyncio.wait_for(task, 5) == 0

    first, second = FakeControlPlane(), FakeControlPlane()
    asyncio.run(once(first))
    asyncio.run(once(second))
    assert first.registrations[0]["node_id"] is None
    assert second.registrations[0]["node_id"] == "node-1"  # the id the first one assigned


def test_explicit_node_id_is_used(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    settings = make_settings(node_id="node-explicit", polls=1, poll_wait_s=0.0)

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            assert await asyncio.wait_for(task, 5) == 0
            assert agent.node_id == "node-explicit"

    asyncio.run(scenario())
    assert fake.registrations[0]["node_id"] == "node-explicit"
    assert request_paths(fake, "/poll") == ["/v1/nodes/node-explicit/poll"]


def test_polls_n_exits_after_n_polls_once_held_units_finish(
    make_settings: Settings, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeControlPlane()
    gate = gates("slow")
    fake.submit("wu_slow", payload={"handler": "hold", "args": {"gate": "slow"}})
    settings = make_settings(polls=2, poll_wait_s=0.05, agent_handlers=[HOLD])

    async def scenario() -> int:
        async with running(settings, fake) as (_, task):
            # its polls are used up while the unit still runs: it stays for the unit
            await fake.wait_until(lambda: bool(logged(caplog, "polls_done")))
            assert gate.entered.is_set() and not task.done()
            gate.released.set()
            return await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.INFO, logger="krako.agent"):
        assert asyncio.run(scenario()) == 0
    assert len(fake.polls) == 2
    assert fake.completions["wu_slow"][0]["result"] == {"released": True}
    events = [r.getMessage() for r in caplog.records]
    assert events.index("polls_done") < events.index("completed") < events.index("stopped")
    assert "shutdown_requested" not in events and not fake.failures  # drained, not stopped


@pytest.mark.parametrize("overdeliver", [0, 4])
def test_max_concurrency_is_never_exceeded(
    make_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overdeliver: int
) -> None:
    (tmp_path / "conc_handlers.py").write_text(
        "import threading, time\n"
        "lock = threading.Lock()\n"
        "now = 0\n"
        "peak = 0\n"
        "def busy(args):\n"
        "    global now, peak\n"
        "    with lock:\n"
        "        now += 1\n"
        "        peak = max(peak, now)\n"
        "    time.sleep(0.03)\n"
        "    with lock:\n"
        "        now -= 1\n"
        "    return {}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = FakeControlPlane()
    for i in range(12):
        fake.submit(f"wu_{i}", payload={"handler": "busy"})
    settings = make_settings(max_concurrency=3, agent_handlers=["busy=conc_handlers:busy"])
    fake.overdeliver = overdeliver  # a control plane that hands out more than asked

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: len(fake.terminal) == 12)
            await stop(agent, task)

    asyncio.run(scenario())
    module = sys.modules.pop("conc_handlers")
    assert module.peak == 3  # reached, never exceeded
    assert all(p["max_units"] <= 3 for p in fake.polls)
    assert len(fake.completions) == 12


def test_offers_without_claims_are_claimed_one_by_one(make_settings: Settings) -> None:
    fake = FakeControlPlane(offer_only=True)
    fake.submit("wu_a")
    fake.submit("wu_b")
    settings = make_settings()

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: len(fake.terminal) == 2)
            await stop(agent, task)

    asyncio.run(scenario())
    claims = [body for _, path, body in fake.requests if path.endswith("/claim")]
    assert claims == [{"attempt": 1}, {"attempt": 1}]
    assert set(fake.completions) == {"wu_a", "wu_b"}


def test_explicit_claim_mode_skips_offers_another_node_won(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    fake.script("claim", problem(409, "already_claimed", "another node was faster"))
    fake.submit("wu_lost")
    settings = make_settings(claim_mode="explicit")

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: agent.stats["skipped"] == 1)
            fake.submit("wu_won")
            await fake.wait_until(lambda: "wu_won" in fake.terminal)
            await stop(agent, task)

    asyncio.run(scenario())
    assert all(p["claim"] is False for p in fake.polls)
    assert "wu_lost" not in fake.terminal and "wu_lost" not in fake.claims
    assert len(fake.completions["wu_won"]) == 1


def test_heartbeats_list_held_units_and_free_slots(make_settings: Settings) -> None:
    fake = FakeControlPlane(heartbeat_interval_s=0.02)
    fake.submit("wu_slow", payload={"handler": "sleep", "args": {"ms": 300}})
    settings = make_settings(max_concurrency=2)

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: any(h["running"] for h in fake.heartbeats))
            await fake.wait_until(lambda: "wu_slow" in fake.terminal)
            await stop(agent, task)

    asyncio.run(scenario())
    busy = next(h for h in fake.heartbeats if h["running"])
    assert busy == {"running": ["wu_slow"], "free_slots": 1, "load": 0.5}


# --------------------------------------------------------------------------- failures of units


def test_unit_failures_are_reported_with_retryable_flag(
    make_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad_handlers.py").write_text(
        "from node_agent import NonRetryableError\n"
        "def boom(args):\n    raise RuntimeError('boom')\n"
        "def refuse(args):\n    raise NonRetryableError('bad input, do not retry')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = FakeControlPlane()
    fake.submit("wu_unknown", payload={"handler": "nope"})
    fake.submit("wu_boom", payload={"handler": "boom"})
    fake.submit("wu_refuse", payload={"handler": "refuse"})
    fake.submit("wu_slow", payload={"handler": "sleep", "args": {"ms": 5000}, "timeout_s": 0.1})
    settings = make_settings(
        agent_handlers=["boom=bad_handlers:boom", "refuse=bad_handlers:refuse"]
    )

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: len(fake.terminal) == 4)
            await stop(agent, task)

    asyncio.run(scenario())
    assert not fake.completions
    unknown = fake.failures["wu_unknown"][0]
    assert unknown["retryable"] is False
    assert unknown["error"]["code"] == "unknown_handler"
    assert "'nope'" in unknown["error"]["message"]
    boom = fake.failures["wu_boom"][0]
    assert boom["retryable"] is True and "RuntimeError: boom" in boom["error"]["message"]
    refuse = fake.failures["wu_refuse"][0]
    assert refuse["retryable"] is False and refuse["error"]["code"] == "non_retryable"
    slow = fake.failures["wu_slow"][0]
    assert slow["retryable"] is True and slow["error"]["code"] == "timeout"


def test_unit_of_a_kind_this_agent_does_not_run_is_handed_back(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    fake.submit("wu_llm", kind="llm_pod", payload={"prompt": "hi"})
    settings = make_settings(agent_kinds=["cpu"])

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_llm" in fake.terminal)
            await stop(agent, task)

    asyncio.run(scenario())
    failure = fake.failures["wu_llm"][0]
    assert failure["retryable"] is True and failure["error"]["code"] == "unsupported_kind"
    assert fake.registrations[0]["supported_kinds"] == ["cpu"]


def test_result_that_is_not_json_fails_the_unit(
    make_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "odd_handlers.py").write_text("def odd(args):\n    return {'x': object()}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = FakeControlPlane()
    fake.submit("wu_odd", payload={"handler": "odd"})
    settings = make_settings(agent_handlers=["odd=odd_handlers:odd"])

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_odd" in fake.terminal)
            await stop(agent, task)

    asyncio.run(scenario())
    failure = fake.failures["wu_odd"][0]
    assert failure["retryable"] is False
    assert failure["error"]["code"] == "result_not_serializable"


# --------------------------------------------------------------------------- llm_pod


def test_llm_pod_reports_the_invocation_then_completes(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    fake.submit(
        "wu_llm", kind="llm_pod", payload={"prompt": "say hello to the fabric", "max_tokens": 10}
    )
    settings = make_settings(llm_provider="stub")

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_llm" in fake.terminal)
            await stop(agent, task)

    asyncio.run(scenario())
    expected = stub_completion(
        LlmRequest(
            messages=[{"role": "user", "content": "say hello to the fabric"}],
            model="gpt-4o-mini",
            max_tokens=10,
        )
    )
    invocation = fake.invocations["wu_llm-1-0"]
    assert invocation["provider"] == "stub" and invocation["model"] == "gpt-4o-mini"
    assert invocation["tokens_in"] == 5 == expected.tokens_in
    assert invocation["tokens_out"] == expected.tokens_out <= 10
    assert invocation["total_tokens"] == 5 + expected.tokens_out
    assert invocation["claim_token"] == "ct-wu_llm-1"
    # gpt-4o-mini: $0.15 per 1M in, $0.60 per 1M out, rounded once to 6 places.
    cost = (Decimal(5) * Decimal("0.15") + expected.tokens_out * Decimal("0.60")) / 10**6
    assert invocation["estimated_cost_usd"] == f"{cost.quantize(Decimal('0.000001')):.6f}"
    [done] = fake.completions["wu_llm"]
    assert done["result"]["text"] == expected.text
    assert done["result"]["usage"] == {
        "tokens_in": 5,
        "tokens_out": expected.tokens_out,
        "total_tokens": 5 + expected.tokens_out,
    }
    paths = [p for _, p, _ in fake.requests if p.startswith("/v1/workunits/wu_llm")]
    assert paths == ["/v1/workunits/wu_llm/llm-invocations", "/v1/workunits/wu_llm/complete"]


# --------------------------------------------------------------------------- control plane faults


def test_outages_are_waited_out_and_nothing_is_reported_twice(
    make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeControlPlane()
    fake.script("register", 503, httpx.ConnectError("refused"))
    fake.script("poll", 502, httpx.ConnectError("refused"), httpx.ReadTimeout("slow"))
    fake.script("complete", 500, httpx.RemoteProtocolError("dropped"), LOSE_REPLY)
    fake.script("heartbeat", 503, httpx.ConnectError("refused"))
    fake.submit("wu_1", payload={"handler": "sha256", "args": {"data": "x", "rounds": 3}})
    settings = make_settings()

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_1" in fake.terminal)
            # Let the agent see the reply of its last (idempotent) retry.
            await fake.wait_until(lambda: agent.stats["completed"] == 1)
            await fake.wait_until(lambda: len(fake.heartbeats) >= 1)
            return await stop(agent, task)

    with caplog.at_level(logging.INFO, logger="krako.agent"):
        assert asyncio.run(scenario()) == 0
    assert len(fake.registrations) == 1
    assert len(fake.completions["wu_1"]) == 1  # accepted once
    # 500, dropped connection, accepted but reply lost, then the retry that got its 200.
    assert len(request_paths(fake, "/wu_1/complete")) == 4
    waits = [r for r in caplog.records if r.getMessage() == "waiting_for_control_plane"]
    ops = {r.krako_fields["op"] for r in waits}  # type: ignore[attr-defined]
    assert ops == {"register", "poll", "complete", "heartbeat"}
    assert any(r.getMessage() == "control_plane_back" for r in caplog.records)


@pytest.mark.parametrize("lost_during", ["poll", "report"])
def test_rejected_node_token_makes_the_agent_register_again(
    make_settings: Settings, lost_during: str, caplog: pytest.LogCaptureFixture
) -> None:
    # No heartbeat within the test, so the 401 is met by a poll or by a report.
    fake = FakeControlPlane(heartbeat_interval_s=300)
    fake.submit("wu_1", payload={"handler": "sleep", "args": {"ms": 200}})
    settings = make_settings()

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            if lost_during == "report":
                await fake.wait_until(lambda: "wu_1" in fake.claims)
                fake.forget_tokens()  # lost while the unit runs: its completion meets the 401
            await fake.wait_until(lambda: "wu_1" in fake.terminal)
            fake.forget_tokens()  # the control plane restarted and lost node tokens
            fake.submit("wu_2")
            await fake.wait_until(lambda: "wu_2" in fake.terminal)
            await stop(agent, task)

    with caplog.at_level(logging.INFO, logger="krako.agent"):
        asyncio.run(scenario())
    assert len(request_paths(fake, "/poll")) < 100  # no hot loop of refused polls
    expected = 3 if lost_during == "report" else 2
    assert len(fake.registrations) == expected
    # each refusal re-registered at once, or after one short backoff step (never longer)
    rejected = [fields(r) for r in logged(caplog, "token_rejected")]
    assert [f["action"] for f in rejected] == ["re-registering"] * (expected - 1)
    assert all(0 <= float(str(f["delay_s"])) <= settings.backoff_max_s for f in rejected)
    assert {r["node_id"] for r in fake.registrations[1:]} == {"node-1"}  # same node
    assert len(fake.completions["wu_1"]) == 1 and len(fake.completions["wu_2"]) == 1
    assert not fake.heartbeats


def test_a_token_refused_again_and_again_backs_off(
    make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeControlPlane(heartbeat_interval_s=300)
    fake.script("poll", *([401] * 10_000))  # registration works, every poll is refused
    settings = make_settings(backoff_initial_s=0.02, backoff_max_s=0.1)

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: len(fake.registrations) >= 6)
            return await stop(agent, task)

    with caplog.at_level(logging.INFO, logger="krako.agent"):
        assert asyncio.run(scenario()) == 0
    assert {r["node_id"] for r in fake.registrations[1:]} == {"node-1"}
    # each refusal soon after a registration waits longer, doubling up to the cap (each
    # delay drawn from [ceiling / 2, ceiling]): a backoff, not a hot loop
    delays = [float(str(fields(r)["delay_s"])) for r in logged(caplog, "token_rejected")]
    ceilings = [0.02, 0.04, 0.08, 0.1, 0.1]
    assert len(delays) >= len(ceilings), delays
    for delay, ceiling in zip(delays, ceilings, strict=False):
        assert ceiling / 2 <= delay <= ceiling, (delays, ceilings)


def test_stale_claim_drops_the_report_without_retrying(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    fake.script("complete", problem(409, "stale_claim", "lease lost"))
    fake.submit("wu_1")
    settings = make_settings()

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: agent.stats["dropped"] == 1)
            await asyncio.sleep(0.1)
            await stop(agent, task)

    asyncio.run(scenario())
    assert len(request_paths(fake, "/wu_1/complete")) == 1
    assert not fake.completions and not fake.failures


def test_revoked_unit_is_stopped_and_never_reported(make_settings: Settings) -> None:
    fake = FakeControlPlane(heartbeat_interval_s=0.02)
    fake.submit("wu_long", payload={"handler": "sleep", "args": {"ms": 10_000}})
    settings = make_settings()

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_long" in agent.held)
            fake.revoke("wu_long")
            # long before its 10 s handler could end: the revocation stopped it
            await fake.wait_until(lambda: "wu_long" not in agent.held, timeout=5)
            assert agent.stats["revoked"] == 1
            fake.submit("wu_next")  # the slot is free again
            await fake.wait_until(lambda: "wu_next" in fake.terminal)
            await stop(agent, task)

    asyncio.run(scenario())
    assert "wu_long" not in fake.terminal
    assert not [
        p for p in request_paths(fake, "/complete") + request_paths(fake, "/fail") if "wu_long" in p
    ]
    assert not fake.stale_reports


def test_a_newer_attempt_of_a_held_unit_supersedes_the_old_one(make_settings: Settings) -> None:
    # Attempt 1 lost its lease while still running here; the control plane then gave
    # attempt 2 to this same node. The stale attempt must stop and stay silent.
    fake = FakeControlPlane()
    fake.submit("wu_1", payload={"handler": "sleep", "args": {"ms": 10_000}}, attempt=1)
    settings = make_settings()

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_1" in agent.held)
            fake.submit("wu_1", payload={"handler": "sleep", "args": {"ms": 50}}, attempt=2)
            await fake.wait_until(lambda: "wu_1" in fake.terminal)
            await fake.wait_until(lambda: agent.held == [])  # the stale attempt stopped too
            await stop(agent, task)

    asyncio.run(scenario())
    [done] = fake.completions["wu_1"]
    assert done["claim_token"] == "ct-wu_1-2" and done["result"] == {"slept_ms": 50}
    assert not fake.stale_reports and not fake.failures


def test_refused_join_token_exits_with_code_2(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    settings = make_settings(node_join_token="wrong")

    async def scenario() -> int:
        async with running(settings, fake) as (_, task):
            return await asyncio.wait_for(task, 5)

    assert asyncio.run(scenario()) == 2
    assert not fake.polls


def test_stop_while_the_control_plane_is_down_exits_promptly(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    fake.script("register", *([httpx.ConnectError("refused")] * 1000))
    settings = make_settings(backoff_initial_s=0.05, backoff_max_s=0.2)

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: len(fake.requests) >= 3)
            return await stop(agent, task)

    assert asyncio.run(scenario()) == 0


# --------------------------------------------------------------------------- shutdown


def test_stop_lets_running_units_finish_within_the_grace_period(
    make_settings: Settings, gates: Gates
) -> None:
    fake = FakeControlPlane()
    gate = gates("slow")
    fake.submit("wu_slow", payload={"handler": "hold", "args": {"gate": "slow"}})
    settings = make_settings(shutdown_grace_s=5.0, poll_wait_s=5.0, agent_handlers=[HOLD])

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            # the unit runs, and the next poll is held, idle, in its 5 s wait
            await fake.wait_until(lambda: gate.entered.is_set() and len(fake.polls) == 2)
            agent.request_stop("test")
            await fake.wait_until(lambda: fake.cut_polls == 1)  # the stop dropped that poll
            assert not task.done()  # and waits for the running unit
            gate.released.set()
            code = await asyncio.wait_for(task, 10)
            assert len(fake.polls) == 2  # no poll after the stop
            return code

    assert asyncio.run(scenario()) == 0
    assert fake.answered_polls == 1
    assert fake.completions["wu_slow"][0]["result"] == {"released": True}


def test_a_claim_granted_as_the_stop_arrives_is_run_not_lost(make_settings: Settings) -> None:
    # The control plane grants the claim, then its reply is still on the way when SIGTERM
    # lands: the agent waits a moment for the poll in flight and runs what it brings.
    fake = FakeControlPlane(poll_reply_delay_s=0.2)
    settings = make_settings(shutdown_grace_s=5.0)

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: bool(fake.polls))
            fake.submit("wu_late", payload={"handler": "sleep", "args": {"ms": 50}})
            await fake.wait_until(lambda: "wu_late" in fake.claims)
            return await stop(agent, task)

    assert asyncio.run(scenario()) == 0
    assert [c["result"] for c in fake.completions["wu_late"]] == [{"slept_ms": 50}]


def test_a_stop_drops_an_idle_poll_quickly(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    settings = make_settings(poll_wait_s=20.0)

    async def scenario() -> None:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: bool(fake.polls))
            assert await stop(agent, task) == 0

    asyncio.run(scenario())
    # dropped while held, not waited out: the fake never answered it
    assert (len(fake.polls), fake.cut_polls, fake.answered_polls) == (1, 1, 0)


def test_units_past_the_grace_period_are_failed_as_retryable(
    make_settings: Settings, gates: Gates
) -> None:
    # A handler that ignores cancellation (``hold``): the agent must not wait for it.
    fake = FakeControlPlane()
    gate = gates("stubborn")
    fake.submit("wu_stubborn", payload={"handler": "hold", "args": {"gate": "stubborn"}})
    settings = make_settings(shutdown_grace_s=0.2, agent_handlers=[HOLD])

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: gate.entered.is_set())
            return await stop(agent, task)

    assert asyncio.run(scenario()) == 0
    assert not gate.returned.is_set()  # the agent is done while its handler still runs
    failure = fake.failures["wu_stubborn"][0]
    assert failure["retryable"] is True and failure["error"]["code"] == "agent_shutdown"


def test_second_stop_request_gives_up_at_once(make_settings: Settings) -> None:
    fake = FakeControlPlane()
    fake.submit("wu_slow", payload={"handler": "sleep", "args": {"ms": 10_000}})
    fake.script("fail", *([503] * 1000))  # reports cannot get through
    settings = make_settings(shutdown_grace_s=30.0, report_grace_s=30.0)

    async def scenario() -> int:
        async with running(settings, fake) as (agent, task):
            await fake.wait_until(lambda: "wu_slow" in agent.held)
            agent.request_stop("first")
            await asyncio.sleep(0.05)
            agent.request_stop("second")
            return await asyncio.wait_for(task, 3)

    assert asyncio.run(scenario()) == 0
