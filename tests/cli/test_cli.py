"""``krako`` against a real control plane (see conftest): submit, status, watch, explain,
nodes, capacity, tenants, ``--json`` and the exit codes.

Not covered here: ``ledger export``, ``wallet`` and ``replay --verify`` against the real
server (their endpoints are still being built); test_cli_scripted.py drives them through a
scripted transport written from API.md instead."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from krako_cli.client import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from tests.cli.conftest import FakeNode, Invoke, Server
from tests.support.metrics import waiters
from tests.support.ports import free_port
from tests.support.waiting import wait_until

MakeNode = Callable[..., FakeNode]


def _json(text: str) -> Any:
    return json.loads(text)


def _submit(krako: Invoke, key: str, *args: str) -> dict[str, Any]:
    result = krako("submit", "cpu", "--handler", "noop", *args, "--json", token=key)
    assert result.exit_code == EXIT_OK, result.output + result.stderr
    return dict(_json(result.stdout))


# --------------------------------------------------------------------------- tenants


def test_tenants_create_prints_the_key_once_and_the_key_works(
    krako: Invoke, server: Server
) -> None:
    result = krako("tenants", "create", "globex", "--json", token=server.admin)
    assert result.exit_code == EXIT_OK, result.stderr
    created = _json(result.stdout)
    assert created["name"] == "globex" and created["api_key"]

    me = krako("tenants", "me", "--json", token=created["api_key"])
    assert me.exit_code == EXIT_OK
    assert _json(me.stdout) == {"tenant_id": created["tenant_id"], "name": "globex"}

    human = krako("tenants", "create", "initech", token=server.admin)
    assert human.exit_code == EXIT_OK
    assert "api_key" in human.stdout and "not shown again" in human.stderr


def test_creating_a_tenant_needs_the_admin_token(krako: Invoke, tenant_key: str) -> None:
    result = krako("tenants", "create", "nope", token=tenant_key)
    assert result.exit_code == EXIT_AUTH
    assert "forbidden" in result.stderr.lower()


# --------------------------------------------------------------------------- submit, status


def test_submit_then_status(krako: Invoke, tenant_key: str, region: str) -> None:
    unit = _submit(
        krako,
        tenant_key,
        "--session",
        "s-status",
        "--priority",
        "p3",
        "--region",
        region,
        "--arg",
        "ms=5",
        "--arg",
        "label=hello",
        "--max-attempts",
        "2",
    )
    assert unit["kind"] == "cpu" and unit["priority"] == "p3" and unit["region"] == region
    assert unit["execution_session_id"] == "s-status" and unit["max_attempts"] == 2
    assert unit["payload"] == {"handler": "noop", "args": {"ms": 5, "label": "hello"}}
    assert unit["status"] == "queued"  # nothing runs in this region

    as_json = krako("status", unit["id"], "--json", token=tenant_key)
    assert as_json.exit_code == EXIT_OK
    assert _json(as_json.stdout)["id"] == unit["id"]

    human = krako("status", unit["id"], token=tenant_key)
    assert human.exit_code == EXIT_OK
    assert unit["id"] in human.stdout and "queued" in human.stdout and "s-status" in human.stdout


def test_submit_with_a_whole_payload_and_a_fresh_session(krako: Invoke, tenant_key: str) -> None:
    result = krako(
        "submit", "llm_pod", "--payload", '{"prompt": "hi", "max_tokens": 8}', token=tenant_key
    )
    assert result.exit_code == EXIT_OK, result.stderr
    assert result.stdout.startswith("submitted wu_")
    assert "(llm_pod, p1, session cli-" in result.stdout


def test_submit_with_an_idempotency_key_returns_the_same_unit(
    krako: Invoke, tenant_key: str, region: str
) -> None:
    key = uuid.uuid4().hex
    same = ("--session", "s-idem", "--region", region, "--idempotency-key", key)
    first = _submit(krako, tenant_key, *same)
    again = krako("submit", "cpu", "--handler", "noop", *same, token=tenant_key)
    assert again.exit_code == EXIT_OK
    assert again.stdout.startswith(f"already submitted {first['id']}")

    other = krako("submit", "cpu", "--handler", "sleep", *same, token=tenant_key)
    assert other.exit_code == EXIT_FAILED  # 409 idempotency_conflict
    assert "idempotency_conflict" in other.stderr


def test_submit_wait_completes_with_exit_0(
    krako: Invoke, tenant_key: str, make_node: MakeNode, region: str
) -> None:
    node = make_node(region)
    worker = node.in_background(lambda n: n.complete(n.take(), result={"ok": True}))
    result = krako(
        "submit",
        "cpu",
        "--handler",
        "noop",
        "--region",
        region,
        "--wait",
        "--timeout",
        "20",
        "--json",
        token=tenant_key,
    )
    worker.join(5)
    assert result.exit_code == EXIT_OK, result.stderr
    unit = _json(result.stdout)
    assert unit["status"] == "completed" and unit["result"] == {"ok": True}
    assert unit["node_id"] == node.node_id


def test_submit_wait_on_a_failing_unit_exits_1(
    krako: Invoke, tenant_key: str, make_node: MakeNode, region: str
) -> None:
    node = make_node(region)
    worker = node.in_background(lambda n: n.fail(n.take(), "boom"))
    result = krako(
        "submit",
        "cpu",
        "--handler",
        "noop",
        "--region",
        region,
        "--wait",
        "--timeout",
        "20",
        token=tenant_key,
    )
    worker.join(5)
    assert result.exit_code == EXIT_FAILED
    assert "failed" in result.stdout and "boom" in result.stdout


# No node serves the region: a CLI that ignored --timeout would wait for ever.
@pytest.mark.timeout(60)
def test_submit_wait_timeout_exits_1(krako: Invoke, tenant_key: str, region: str) -> None:
    result = krako(
        "submit",
        "cpu",
        "--handler",
        "noop",
        "--region",
        region,
        "--wait",
        "--timeout",
        "1",
        token=tenant_key,
    )
    assert result.exit_code == EXIT_FAILED
    assert "still queued" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--payload", "{nope"], "not JSON"),
        (["--payload", "[1]"], "JSON object"),
        ([], "needs --handler"),
        (["--handler", "noop", "--arg", "novalue"], "not key=value"),
        (["--handler", "noop", "--payload", "{}"], "excludes"),
        (["--handler", "noop", "--priority", "p10"], "p10"),
    ],
)
def test_submit_usage_errors_exit_2(
    krako: Invoke, tenant_key: str, args: list[str], message: str
) -> None:
    result = krako("submit", "cpu", *args, token=tenant_key)
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr


def test_input_the_control_plane_refuses_exits_2_with_the_problem(
    krako: Invoke, tenant_key: str
) -> None:
    result = krako(
        "submit", "cpu", "--handler", "noop", "--session", "x" * 300, "--json", token=tenant_key
    )
    assert result.exit_code == EXIT_USAGE
    problem = _json(result.stdout)
    assert problem["status"] == 422 and problem["code"] == "validation_error"
    assert "execution_session_id" in result.stderr


# --------------------------------------------------------------------------- exit codes


def test_unknown_unit_exits_3_with_the_problem(krako: Invoke, tenant_key: str) -> None:
    result = krako("status", "wu_does_not_exist", token=tenant_key)
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr.startswith("error: Not found (not_found): ")
    assert "wu_does_not_exist" in result.stderr

    as_json = krako("status", "wu_does_not_exist", "--json", token=tenant_key)
    assert as_json.exit_code == EXIT_NOT_FOUND
    assert _json(as_json.stdout)["code"] == "not_found"


def test_another_tenants_unit_is_not_found(
    krako: Invoke, tenant_key: str, server: Server, region: str
) -> None:
    unit = _submit(krako, tenant_key, "--session", "s-mine", "--region", region)
    other = _json(krako("tenants", "create", "other", "--json", token=server.admin).stdout)
    result = krako("status", unit["id"], token=other["api_key"])
    assert result.exit_code == EXIT_NOT_FOUND


def test_auth_errors_exit_4(krako: Invoke, tenant_key: str) -> None:
    missing = krako("capacity")
    assert missing.exit_code == EXIT_AUTH
    assert "KRAKO_TOKEN" in missing.stderr  # the hint

    unknown = krako("capacity", token="kt_not_a_real_key_at_all")
    assert unknown.exit_code == EXIT_AUTH

    wrong_role = krako("nodes", "--json", token=tenant_key)
    assert wrong_role.exit_code == EXIT_AUTH
    assert _json(wrong_role.stdout)["status"] == 403


def test_token_and_url_from_the_environment(
    krako: Invoke, tenant_key: str, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from krako_cli.main import app

    monkeypatch.setenv("KRAKO_URL", server.url + "/")
    monkeypatch.setenv("KRAKO_TOKEN", tenant_key)
    result = CliRunner().invoke(app, ["capacity", "--json"])
    assert result.exit_code == EXIT_OK, result.stderr
    assert _json(result.stdout)["mode"] in ("OPEN", "THROTTLED", "CRITICAL")


def test_unreachable_control_plane_exits_5(krako: Invoke, tenant_key: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = krako("status", "wu_x", token=tenant_key, url=url)
    assert result.exit_code == EXIT_UNREACHABLE
    assert f"cannot reach the control plane at {url}" in result.stderr


# --------------------------------------------------------------------------- cancel, watch


def test_cancel_then_cancel_again(krako: Invoke, tenant_key: str, region: str) -> None:
    unit = _submit(krako, tenant_key, "--region", region)
    first = krako("cancel", unit["id"], token=tenant_key)
    assert first.exit_code == EXIT_OK and "cancelled" in first.stdout
    again = krako("cancel", unit["id"], token=tenant_key)
    assert again.exit_code == EXIT_FAILED  # 409: already terminal

    # watching a unit that is already over prints its history and its fate at once
    watched = krako("watch", unit["id"], token=tenant_key)
    assert watched.exit_code == EXIT_FAILED
    assert "workunit.cancelled" in watched.stdout and f"{unit['id']}: cancelled" in watched.stdout


def test_watch_a_unit_until_it_completes(
    krako: Invoke, tenant_key: str, make_node: MakeNode, region: str
) -> None:
    node = make_node(region)
    unit = _submit(krako, tenant_key, "--region", region, "--session", "s-watch")

    def later(n: FakeNode) -> None:
        claim = n.take()
        # complete only once the watch holds a long-poll: it sees the completion live
        with n.server.http() as c:
            wait_until("the watch holding a long-poll", lambda: waiters(c) >= 1)
        n.complete(claim, result="done")

    worker = node.in_background(later)
    result = krako("watch", unit["id"], "--timeout", "20", "--json", token=tenant_key)
    worker.join(5)
    assert result.exit_code == EXIT_OK, result.stderr
    events = [_json(line) for line in result.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "workunit.submitted"
    assert types[-1] == "workunit.completed"
    assert "workunit.scheduled" in types and "workunit.claimed" in types
    assert {e["stream_id"] for e in events} == {unit["id"]}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))  # each event once, in log order


def test_watch_human_output_and_timeout(krako: Invoke, tenant_key: str, region: str) -> None:
    unit = _submit(krako, tenant_key, "--region", region)
    result = krako("watch", unit["id"], "--timeout", "1", token=tenant_key)
    assert result.exit_code == EXIT_FAILED  # not terminal when the time ran out
    assert "workunit.submitted" in result.stdout
    assert "(timed out)" in result.stdout


def test_watch_a_session(krako: Invoke, tenant_key: str, region: str) -> None:
    session = f"s-{uuid.uuid4().hex[:6]}"
    ids = {
        _submit(krako, tenant_key, "--session", session, "--region", region)["id"] for _ in range(2)
    }
    _submit(krako, tenant_key, "--session", "some-other-session", "--region", region)
    result = krako("watch", "--session", session, "--timeout", "1", "--json", token=tenant_key)
    assert result.exit_code == EXIT_OK, result.stderr
    events = [_json(line) for line in result.stdout.splitlines()]
    assert {e["stream_id"] for e in events} == ids
    assert all(e["correlation_id"] == session for e in events)


def test_watch_needs_a_unit_or_a_session(krako: Invoke, tenant_key: str) -> None:
    assert krako("watch", token=tenant_key).exit_code == EXIT_USAGE
    assert krako("watch", "wu_1", "--session", "s", token=tenant_key).exit_code == EXIT_USAGE


# --------------------------------------------------------------------------- explain, nodes


def test_explain_shows_the_decision(
    krako: Invoke, tenant_key: str, make_node: MakeNode, region: str, server: Server
) -> None:
    a = make_node(region, node_id=f"a-{region}", max_concurrency=4)
    b = make_node(region, node_id=f"b-{region}", max_concurrency=2)
    unit = _submit(krako, tenant_key, "--region", region)

    result = krako("explain", unit["id"], "--json", token=tenant_key)
    assert result.exit_code == EXIT_OK, result.stderr
    report = _json(result.stdout)
    [placement] = report["placements"]
    decision = placement["decision"]
    assert placement["node_id"] == decision["chosen"] == a.node_id  # more free capacity
    assert [c["node_id"] for c in decision["candidates"]] == [a.node_id, b.node_id]
    assert {"free_capacity", "load", "trust", "region_match"} <= set(
        decision["candidates"][0]["components"]
    )

    human = krako("explain", unit["id"], token=server.admin)
    assert human.exit_code == EXIT_OK
    out = human.stdout
    assert "attempt 1: placed on " + a.node_id in out
    assert "why: highest score" in out
    assert "candidates" in out and b.node_id in out and "chosen" in out
    assert "score = " in out


def test_explain_lists_exclusions_with_reasons(
    krako: Invoke, tenant_key: str, make_node: MakeNode, region: str
) -> None:
    make_node(region)
    llm_only = make_node(region, kinds=("llm_pod",))
    unit = _submit(krako, tenant_key, "--region", region)
    report = _json(krako("explain", unit["id"], "--json", token=tenant_key).stdout)
    excluded = {e["node_id"]: e["reason"] for e in report["placements"][0]["decision"]["excluded"]}
    assert excluded.get(llm_only.node_id) == "kind_unsupported"

    human = krako("explain", unit["id"], token=tenant_key)
    assert "excluded" in human.stdout and "kind_unsupported" in human.stdout


def test_explain_a_unit_not_placed_yet(krako: Invoke, tenant_key: str, region: str) -> None:
    unit = _submit(krako, tenant_key, "--region", region)
    result = krako("explain", unit["id"], token=tenant_key)
    assert result.exit_code == EXIT_OK
    assert "not placed yet" in result.stdout
    assert (
        _json(krako("explain", unit["id"], "--json", token=tenant_key).stdout)["placements"] == []
    )
    assert krako("explain", "wu_nope", token=tenant_key).exit_code == EXIT_NOT_FOUND


def test_nodes_table_and_json(
    krako: Invoke, server: Server, make_node: MakeNode, region: str
) -> None:
    node = make_node(region, kinds=("cpu", "llm_pod"), max_concurrency=3)
    as_json = krako("nodes", "--json", token=server.admin)
    assert as_json.exit_code == EXIT_OK
    mine = [n for n in _json(as_json.stdout) if n["node_id"] == node.node_id]
    assert mine and mine[0]["region"] == region and mine[0]["max_concurrency"] == 3

    human = krako("nodes", token=server.admin)
    assert human.exit_code == EXIT_OK
    assert node.node_id in human.stdout and "node(s)" in human.stdout


# --------------------------------------------------------------------------- capacity


def test_capacity_show_set_and_clear(krako: Invoke, server: Server, tenant_key: str) -> None:
    shown = krako("capacity", "--json", token=tenant_key)
    assert shown.exit_code == EXIT_OK
    assert set(_json(shown.stdout)) >= {"mode", "healthy_nodes", "queue_depth", "running"}

    human = krako("capacity", token=tenant_key)
    assert human.exit_code == EXIT_OK and "mode" in human.stdout and "queue" in human.stdout

    denied = krako("capacity", "set", "CRITICAL", "--reason", "x", token=tenant_key)
    assert denied.exit_code == EXIT_AUTH

    try:
        result = krako(
            "capacity",
            "set",
            "throttled",
            "--reason",
            "cli test",
            "--ttl",
            "60",
            "--json",
            token=server.admin,
        )
        assert result.exit_code == EXIT_OK, result.stderr
        assert _json(result.stdout)["mode"] == "THROTTLED"
        assert _json(krako("capacity", "--json", token=server.admin).stdout)["mode"] == (
            "THROTTLED"
        )
    finally:
        cleared = krako("capacity", "clear", token=server.admin)
    assert cleared.exit_code == EXIT_OK and "override cleared" in cleared.stdout

    assert krako("capacity", "set", "SIDEWAYS", "--reason", "x", token=server.admin).exit_code == (
        EXIT_USAGE
    )
    # --reason is required: the override's event says why
    assert krako("capacity", "set", "OPEN", token=server.admin).exit_code == EXIT_USAGE
