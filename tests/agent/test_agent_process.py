"""``python -m node_agent`` as a real process against the fake control plane served over real
HTTP (uvicorn in a thread): JSON logs, SIGTERM with a unit running, ``--polls``, restarts."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.agent.agent_fakes import FakeControlPlane
from tests.support.ports import free_port
from tests.support.processes import AgentProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def asgi(fake: FakeControlPlane) -> Any:
    """Serve ``fake.handle`` as an ASGI app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = httpx.Request(
            scope["method"],
            f"http://cp{scope['path']}",
            headers=[(k.decode(), v.decode()) for k, v in scope["headers"]],
            content=body,
        )
        response = await fake.handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": response.content})

    return app


class ServedControlPlane:
    """A FakeControlPlane on a real port, its loop in a background thread."""

    def __init__(self) -> None:
        self.fake = FakeControlPlane(heartbeat_interval_s=0.2)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        config = uvicorn.Config(
            asgi(self.fake),
            host="127.0.0.1",
            port=self.port,
            log_level="critical",  # a killed agent's cut long-poll is expected noise
            lifespan="off",
            timeout_graceful_shutdown=1,  # long-polls of a killed agent may still be held
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True
        )
        self.thread.start()
        wait_until("the fake control plane serving", lambda: self.server.started, interval=0.02)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))

    def wait(self, what: str, predicate: Callable[[], bool], agent: AgentProcess) -> None:
        """Until ``predicate()`` holds of the fake's state; the agent's log on a timeout."""
        wait_until(what, predicate, interval=0.02, context=agent.logs)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served() -> Iterator[ServedControlPlane]:
    cp = ServedControlPlane()
    yield cp
    cp.close()


def spawn(cp: ServedControlPlane, tmp_path: Path, *extra: str) -> AgentProcess:
    return AgentProcess(
        workdir=tmp_path,
        control_plane_url=cp.url,
        state_dir=tmp_path / "state",
        env={"KRAKO_NODE_JOIN_TOKEN": "join-secret"},  # from the environment, flags for the rest
        pythonpath=[tmp_path],  # for --handler modules written by a test
        args=["--log-format", "json", "--backoff-initial", "0.05", "--backoff-max", "0.2", *extra],
    ).start()


def test_sigterm_lets_the_running_unit_finish_then_exits_0(
    served: ServedControlPlane, tmp_path: Path
) -> None:
    fake = served.fake
    for i in range(3):
        served.call(
            fake.submit,
            f"wu_{i}",
            payload={"handler": "sha256", "args": {"data": "x", "rounds": 10}},
        )
    agent = spawn(served, tmp_path, "--poll-wait", "5", "--max-concurrency", "2")
    with agent:
        served.wait("the first three units done", lambda: len(fake.terminal) == 3, agent)
        served.call(fake.submit, "wu_slow", payload={"handler": "sleep", "args": {"ms": 800}})
        served.wait("wu_slow claimed", lambda: "wu_slow" in fake.claims, agent)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0, agent.logs()
    assert fake.completions["wu_slow"][0]["result"] == {"slept_ms": 800}
    assert all(len(fake.completions[f"wu_{i}"]) == 1 for i in range(3))
    lines = agent.json_lines()
    events = [line["event"] for line in lines]
    for expected in ("registered", "claimed", "completed", "shutdown_requested", "stopped"):
        assert expected in events
    completed = [line for line in lines if line["event"] == "completed"]
    assert {line["unit"] for line in completed} == {"wu_0", "wu_1", "wu_2", "wu_slow"}
    assert events.index("shutdown_requested") < events.index("stopped")


def test_sigterm_does_not_wait_for_a_handler_that_ignores_cancellation(
    served: ServedControlPlane, tmp_path: Path
) -> None:
    # the handler says when it runs, then outlives the wait below by far
    (tmp_path / "stubborn.py").write_text(
        "import pathlib, time\n"
        "def run(args):\n"
        "    pathlib.Path('stubborn-started').touch()\n"
        "    time.sleep(60)\n"
        "    return {}\n"
    )
    fake = served.fake
    served.call(fake.submit, "wu_stuck", payload={"handler": "stubborn"})
    agent = spawn(served, tmp_path, "--handler", "stubborn=stubborn:run", "--grace-period", "0.3")
    with agent:
        served.wait("the handler running", (tmp_path / "stubborn-started").exists, agent)
        agent.send_signal(signal.SIGTERM)
        # exits while its handler still sleeps: it did not wait for it
        assert agent.wait(20) == 0, agent.logs()
    failure = fake.failures["wu_stuck"][0]
    assert failure["retryable"] is True and failure["error"]["code"] == "agent_shutdown"
    events = [line["event"] for line in agent.json_lines()]
    assert "shutdown_grace_expired" in events and "exit_abandoning_handler_threads" in events


def test_polls_flag_exits_by_itself_and_keeps_the_node_id(
    served: ServedControlPlane, tmp_path: Path
) -> None:
    for _ in range(2):
        with spawn(served, tmp_path, "--polls", "2", "--poll-wait", "0.1") as agent:
            assert agent.wait(20) == 0, agent.logs()
    fake = served.fake
    assert [r["node_id"] for r in fake.registrations] == [None, "node-1"]
    assert len(fake.polls) == 4


def test_waits_for_a_control_plane_that_is_not_up_yet(tmp_path: Path) -> None:
    waiting = "event=waiting_for_control_plane op=register"  # key=value by default
    agent = AgentProcess(  # configured by its environment alone
        workdir=tmp_path,
        env={
            "KRAKO_CONTROL_PLANE_URL": f"http://127.0.0.1:{free_port()}",
            "KRAKO_NODE_JOIN_TOKEN": "join-secret",
            "KRAKO_BACKOFF_INITIAL_S": "0.05",
            "KRAKO_BACKOFF_MAX_S": "0.1",
            "KRAKO_AGENT_STATE_DIR": str(tmp_path / "s"),
        },
    )
    with agent.start():
        # refused again and again, and still there: it keeps waiting
        wait_until(
            "a third attempt to register",
            lambda: agent.output().count(waiting) >= 3,
            context=agent.logs,
        )
        agent.check_running()
        agent.send_signal(signal.SIGINT)
        assert agent.wait(10) == 0, agent.logs()
    assert "event=shutdown_requested" in agent.output()


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("krako-agent")
    if not script.exists():
        pytest.skip("krako-agent console script not installed in this environment")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "KRAKO_CONTROL_PLANE_URL" in out.stdout and "--join-token" in out.stdout
