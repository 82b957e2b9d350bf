"""The test harness itself (tests/support): waiting, the event reader, child processes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.events import EventTail, read_events
from tests.support.ports import free_port
from tests.support.processes import ProcessExited, ServerProcess
from tests.support.waiting import wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, [], {"seq": 3}])
    assert wait_until("a value", lambda: next(values), interval=0) == {"seq": 3}


def test_wait_until_fails_with_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as failure:
        wait_until("the moon", list, 0.05, context=lambda: "context line")
    message = str(failure.value)
    assert "waiting for the moon" in message and "last seen: []" in message
    assert message.endswith("\ncontext line")


def test_wait_until_lets_a_predicate_fail_early() -> None:
    def predicate() -> bool:
        raise ProcessExited("server", 3, "log")

    with pytest.raises(ProcessExited, match="exited with status 3"):
        wait_until("never", predicate)


def _log(n: int) -> list[dict[str, Any]]:
    return [
        {"seq": s, "type": "a" if s % 2 else "b", "stream_id": f"u{s % 3}"} for s in range(1, n)
    ]


def test_the_event_tail_reads_page_after_page_and_only_what_is_new() -> None:
    log = _log(2500)
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        after, limit = int(params["after"]), int(params["limit"])
        page = [e for e in log if e["seq"] > after][:limit]
        return httpx.Response(
            200, json={"events": page, "last_seq": page[-1]["seq"] if page else after}
        )

    with httpx.Client(base_url="http://cp", transport=httpx.MockTransport(handler)) as client:
        tail = EventTail(client, {"Authorization": "Bearer t"})
        assert tail.read(wait_s=5) == log
        assert [p["after"] for p in seen] == ["0", "1000", "2000"]
        assert [p["wait_s"] for p in seen] == ["5", "0", "0"]  # only the first one is held
        log.append({"seq": 2500, "type": "a", "stream_id": "u9"})
        assert tail.read() == [log[-1]]
        assert tail.of("a", stream_id="u9") == [log[-1]]
        assert read_events(client, {}, stream_id="u1") == [e for e in log if e["stream_id"] == "u1"]


def test_a_server_that_exits_before_it_is_ready_fails_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('cannot start: no config'); sys.exit(3)"
    server = ServerProcess(workdir=tmp_path, name="broken", argv=[sys.executable, "-c", code])
    with pytest.raises(ProcessExited) as exited:
        server.start()
    assert exited.value.returncode == 3
    assert "cannot start: no config" in exited.value.log


def test_a_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
