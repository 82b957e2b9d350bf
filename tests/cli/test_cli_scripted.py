"""``krako`` against a scripted control plane (``httpx.MockTransport``): the billing commands
as API.md describes their endpoints, error mapping, and which requests are retried.

The billing endpoints are being built concurrently; these tests pin the CLI's side of the
contract (request shape, output, exit codes), not the server's behaviour."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from krako_cli.client import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Runtime,
)
from krako_cli.main import app

Handler = Callable[[httpx.Request], httpx.Response]

UNIT: dict[str, Any] = {
    "id": "wu_1",
    "tenant_id": "ten_1",
    "kind": "cpu",
    "execution_session_id": "s1",
    "priority": "p1",
    "region": None,
    "payload": {"handler": "noop", "args": {}},
    "status": "queued",
    "attempt": 1,
    "max_attempts": 3,
    "node_id": None,
    "result": None,
    "error": None,
    "created_at": "2026-11-27T12:00:00Z",
    "updated_at": "2026-11-27T12:00:00Z",
}

ENTRY: dict[str, Any] = {
    "entry_id": "le_1",
    "source_event_id": "evt_1",
    "source_seq": 7,
    "line_item_type": "workunit_cpu",
    "tenant_id": "ten_1",
    "work_unit_id": "wu_1",
    "execution_session_id": "s1",
    "quantity": "0.012000",
    "unit": "cpu_s",
    "pricing": {"usd_per_cpu_s": "0.000050", "price_version": 1},
    "amount_usd": "0.000001",
    "recorded_at": "2026-11-27T12:00:01Z",
}


def problem(status: int, code: str, title: str, detail: str, **headers: str) -> httpx.Response:
    body = {
        "type": f"https://krako.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **headers}
    )


class Script:
    """Answers requests with ``handler`` and records them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def run(self, *args: str, token: str = "tok") -> Result:
        rt = Runtime(transport=httpx.MockTransport(self))
        return CliRunner().invoke(
            app,
            ["--url", "http://cp.test", "--token", token, *args],
            obj=rt,
            catch_exceptions=False,
        )


# --------------------------------------------------------------------------- ledger


def test_ledger_export_passes_jsonl_through() -> None:
    lines = [json.dumps(ENTRY, sort_keys=True), json.dumps({**ENTRY, "entry_id": "le_2"})]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content="\n".join(lines) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )

    script = Script(handler)
    result = script.run("ledger", "export", "--tenant", "ten_1", "--after", "5")
    assert result.exit_code == EXIT_OK
    assert result.stdout.splitlines() == lines
    [request] = script.requests
    assert request.url.path == "/v1/billing/ledger"
    assert request.headers["accept"] == "application/x-ndjson"
    assert request.headers["authorization"] == "Bearer tok"
    assert request.url.params["tenant_id"] == "ten_1" and request.url.params["after"] == "5"


def test_ledger_export_follows_the_cursor_of_json_pages() -> None:
    second = {**ENTRY, "entry_id": "le_2", "source_seq": 9}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") == "c1":
            return httpx.Response(200, json={"entries": [second], "next_cursor": None})
        return httpx.Response(200, json={"entries": [ENTRY], "next_cursor": "c1"})

    script = Script(handler)
    result = script.run("ledger", "export")
    assert result.exit_code == EXIT_OK
    assert [json.loads(line) for line in result.stdout.splitlines()] == [ENTRY, second]
    first_line = result.stdout.splitlines()[0]
    assert first_line == json.dumps(ENTRY, sort_keys=True, separators=(",", ":"))
    assert len(script.requests) == 2
    assert "tenant_id" not in script.requests[0].url.params


def test_ledger_export_error_exit_code() -> None:
    script = Script(lambda r: problem(403, "forbidden", "Forbidden", "node tokens cannot"))
    result = script.run("ledger", "export")
    assert result.exit_code == EXIT_AUTH
    assert "Forbidden (forbidden): node tokens cannot" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- wallet


WALLET = {
    "tenant_id": "ten_1",
    "as_of_seq": 42,
    "totals": {"workunit_cpu": "0.000150", "llm_tokens": "0.002000"},
    "total_usd": "0.002150",
}


def test_wallet_of_a_tenant_and_of_the_token_s_own_tenant() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tenants/me":
            return httpx.Response(200, json={"tenant_id": "ten_1", "name": "acme"})
        assert request.url.path == "/v1/billing/wallets/ten_1"
        return httpx.Response(200, json=WALLET)

    script = Script(handler)
    as_json = script.run("wallet", "ten_1", "--json")
    assert as_json.exit_code == EXIT_OK and json.loads(as_json.stdout) == WALLET

    human = script.run("wallet")
    assert human.exit_code == EXIT_OK
    assert "$0.002150" in human.stdout and "42" in human.stdout
    assert [r.url.path for r in script.requests][-2:] == [
        "/v1/tenants/me",
        "/v1/billing/wallets/ten_1",
    ]


def test_wallet_of_another_tenant_is_not_found() -> None:
    script = Script(lambda r: problem(404, "not_found", "Not found", "tenant ten_2 not found"))
    assert script.run("wallet", "ten_2").exit_code == EXIT_NOT_FOUND


# --------------------------------------------------------------------------- replay


def _replay(identical: bool) -> Script:
    report = {
        "identical": identical,
        "live_digest": "sha256:aa",
        "replay_digest": "sha256:aa" if identical else "sha256:bb",
        "events_replayed": 120,
        "ledger_entries": 30,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/v1/billing/replay"
        return httpx.Response(200, json=report)

    return Script(handler)


@pytest.mark.parametrize(
    ("identical", "args", "code"),
    [
        (True, ["--verify"], EXIT_OK),
        (False, ["--verify"], EXIT_FAILED),
        (False, [], EXIT_OK),  # without --verify it only reports
        (False, ["--verify", "--json"], EXIT_FAILED),
    ],
)
def test_replay_verify_exit_codes(identical: bool, args: list[str], code: int) -> None:
    result = _replay(identical).run("replay", *args)
    assert result.exit_code == code
    if "--json" in args:
        assert json.loads(result.stdout)["identical"] is identical
    else:
        assert ("identical" if identical else "DIFFERENT") in result.stdout


# --------------------------------------------------------------------------- errors, retries


@pytest.mark.parametrize(
    ("response", "code", "text"),
    [
        (
            problem(
                429, "admission_rejected", "Admission rejected", "CRITICAL", **{"Retry-After": "3"}
            ),
            EXIT_FAILED,
            "retry after 3 s",
        ),
        (
            problem(413, "payload_too_large", "Payload too large", "over 1 MiB"),
            EXIT_USAGE,
            "payload_too_large",
        ),
        (
            problem(402, "budget_exhausted", "Budget exhausted", "over budget"),
            EXIT_FAILED,
            "budget_exhausted",
        ),
        (httpx.Response(503, text="upstream down"), EXIT_UNREACHABLE, "upstream down"),
        (httpx.Response(404, text="<html>no route</html>"), EXIT_NOT_FOUND, "no route"),
    ],
)
def test_replies_map_to_exit_codes(response: httpx.Response, code: int, text: str) -> None:
    result = Script(lambda r: response).run("submit", "cpu", "--handler", "noop")
    assert result.exit_code == code
    assert text in result.stderr


def test_a_plain_submission_is_not_retried_after_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    script = Script(handler)
    result = script.run("submit", "cpu", "--handler", "noop")
    assert result.exit_code == EXIT_UNREACHABLE
    assert len(script.requests) == 1


def test_a_submission_with_an_idempotency_key_is_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if len(script.requests) == 1:
            raise httpx.ConnectError("refused", request=request)
        assert request.headers["idempotency-key"] == "k1"
        return httpx.Response(201, json=UNIT)

    script = Script(handler)
    result = script.run("submit", "cpu", "--handler", "noop", "--idempotency-key", "k1")
    assert result.exit_code == EXIT_OK, result.stderr
    assert len(script.requests) == 2


def test_wait_rides_out_an_outage_and_a_bad_gateway() -> None:
    replies: list[Callable[[httpx.Request], httpx.Response]] = [
        lambda r: httpx.Response(201, json=UNIT),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
        lambda r: httpx.Response(502, text="bad gateway"),
        lambda r: httpx.Response(200, json={**UNIT, "status": "completed", "result": 1}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return replies[len(script.requests) - 1](request)

    script = Script(handler)
    result = script.run("submit", "cpu", "--handler", "noop", "--wait", "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"
    waits = [r.url.params.get("wait_s") for r in script.requests[1:]]
    assert all(w is not None and float(w) > 0 for w in waits)
