"""krako_cli's client, follow loops and renderers as a library (the demo builds on them),
driven through ``httpx.MockTransport``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from krako_cli.client import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    Api,
    ProblemError,
    Runtime,
    UnreachableError,
)
from krako_cli.follow import Tail, events_after
from krako_cli.render.events import summarize
from krako_cli.render.placements import Placement
from shared.events import Event, EventType


def _api(handler: Any) -> Api:
    return Api(Runtime(url="http://cp.test", token="tok", transport=httpx.MockTransport(handler)))


def _event(seq: int, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": seq,
        "event_id": f"e{seq}",
        "type": type_,
        "tenant_id": None,
        "stream_id": "capacity",
        "payload": payload,
        "recorded_at": "2026-11-27T12:00:00Z",
    }


def test_a_refusal_carries_its_status_code_and_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"title": "Admission rejected", "status": 429, "detail": "CRITICAL"}
        body["code"] = "admission_rejected"
        return httpx.Response(429, json=body, headers={"Retry-After": "30"})

    api = _api(handler)
    with pytest.raises(ProblemError) as info:
        api.post("/v1/workunits", {})
    refusal = info.value
    assert (refusal.status, refusal.code, refusal.retry_after) == (429, "admission_rejected", "30")
    assert refusal.exit_code == EXIT_FAILED
    assert refusal.message.splitlines()[0] == "Admission rejected (admission_rejected): CRITICAL"


def test_no_answer_is_unreachable_and_not_retried_without_a_budget() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UnreachableError) as info:
        _api(handler).get("/v1/capacity")
    assert info.value.exit_code == EXIT_UNREACHABLE and len(calls) == 1


def test_events_after_pages_the_log_until_it_is_read() -> None:
    log = [_event(s, "capacity.override.cleared", {"reason": f"r{s}"}) for s in range(1, 6)]

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        page = [e for e in log if e["seq"] > after][:2]
        return httpx.Response(
            200, json={"events": page, "last_seq": page[-1]["seq"] if page else after}
        )

    events = events_after(_api(handler), 1)
    assert [e.seq for e in events] == [2, 3, 4, 5]


def test_tail_asks_for_one_type_and_moves_past_what_it_saw() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        event = _event(7, "capacity.admission.mode.changed", {"from": "OPEN", "to": "CRITICAL"})
        return httpx.Response(200, json={"events": [event], "last_seq": 9})

    tail = Tail(_api(handler), 3, None, event_type=EventType.CAPACITY_ADMISSION_MODE_CHANGED)
    first = next(iter(tail))
    assert first.seq == 7
    params = seen[0].url.params
    assert params["type"] == "capacity.admission.mode.changed" and params["after"] == "3"
    assert float(params["wait_s"]) > 0


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_event_type_is_put_into_words_even_with_an_empty_payload(
    event_type: EventType,
) -> None:
    event = Event.model_validate(_event(1, event_type.value, {}))
    assert isinstance(summarize(event), str)


def test_a_placement_without_a_decision_reads_as_empty() -> None:
    event = Event(
        seq=3,
        event_id="e3",
        type="workunit.scheduled",
        tenant_id="t",
        stream_id="wu_1",
        payload={"node_id": "n1", "offered_to": ["n1", "n2"], "attempt": 2},
        recorded_at=datetime(2026, 11, 27, tzinfo=UTC),
    )
    placement = Placement.of(event)
    assert (placement.node_id, placement.offered_to, placement.attempt) == ("n1", ["n1", "n2"], 2)
    assert placement.candidates == [] and placement.excluded == []
    assert placement.rule is None and placement.excluded_total == 0
