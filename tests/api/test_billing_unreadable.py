"""A billable event whose stored payload does not validate, in a live log on both backends: the
consumer bills everything around it and keeps going, the anomaly report names it as
``unbillable_event`` with the reason, replay still gives the live state, and the events API
still returns the row as it is stored. Never a 500, never a stuck consumer."""

from __future__ import annotations

from collections.abc import Callable

from control_plane.billing import ledger as store
from control_plane.db.engine import Database
from control_plane.db.uow import write_transaction
from control_plane.eventlog import append
from shared.events import EventType, NewEvent, Payload
from tests.api.billing_kit import anomalies, cpu_usd, entries, replay, run_units, wallet_total
from tests.api.conftest import Api


def _db(api: Api) -> Database:
    return api.services.db


def _append_unreadable(db: Database, tenant_id: str) -> None:
    """Rows the control plane never writes, but a log may hold (a bug, a hand edit): the log
    stores whatever model it is given, so base payloads with the wrong fields will do."""
    rows = [
        ("bad-cpu", EventType.WORKUNIT_COMPLETED, {"node_id": "n1", "attempt": 1, "cpu_ms": "9"}),
        ("bad-llm", EventType.LLM_INVOCATION_COMPLETED, {"node_id": "n1", "tokens_in": 5}),
        ("bad-fail", EventType.WORKUNIT_FAILED, {"attempt": "one"}),
    ]
    with write_transaction(db) as uow:
        append(
            uow,
            [
                NewEvent(
                    event_id=event_id,
                    type=kind,
                    tenant_id=tenant_id,
                    stream_id="wu_forged",
                    payload=Payload.model_validate(payload),
                )
                for event_id, kind, payload in rows
            ],
        )


def test_an_unreadable_billable_event_is_reported_and_billing_goes_on(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(billing={"wallet_snapshot_every": 2})
    tenant_id, th = api.tenant()
    nh = api.node("n1", max_concurrency=8)
    run_units(api, th, "n1", nh, [1000])
    _append_unreadable(_db(api), tenant_id)
    run_units(api, th, "n1", nh, [2000, 30])

    assert wallet_total(api.client, tenant_id) == cpu_usd(1000) + cpu_usd(2000) + cpu_usd(30)
    assert len(entries(api.client)) == 3
    found = {a["source_event_id"]: a for a in anomalies(api.client)}
    assert set(found) == {"bad-cpu", "bad-llm"}  # the failure bills nothing: not an anomaly
    assert {a["kind"] for a in found.values()} == {"unbillable_event"}
    assert found["bad-cpu"]["work_unit_id"] == "wu_forged"
    assert "cpu_ms: Input should be a valid integer, got str '9'" in found["bad-cpu"]["detail"]
    assert "pricing: Field required" in found["bad-cpu"]["detail"]
    assert "tokens_out: Field required" in found["bad-llm"]["detail"]

    full = replay(api.client)
    assert full["identical"] is True and full["ledger_entries"] == 3
    assert replay(api.client, from_snapshot=True)["identical"] is True
    with _db(api).engine.connect() as conn:
        assert store.checkpoint(conn) == max(e["seq"] for e in api.events())

    # the wire form is the row as stored
    [bad] = [e for e in api.events("workunit.completed") if e["event_id"] == "bad-cpu"]
    assert bad["payload"] == {"node_id": "n1", "attempt": 1, "cpu_ms": "9"}
