"""Billing reads never write. ``GET`` of the ledger, a wallet or the anomalies does not fold the
log itself: it asks the billing loop to, and waits (briefly) until the consumer's checkpoint
reaches the head of the log as it stood when the read came in. So a line is there right after
the completion that caused it, on any replica, while the read appends nothing and takes no
write lock: with the write lock held by someone else, the reads still answer."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import psycopg

from control_plane.db.engine import WRITE_LOCK_KEY
from tests.api.billing_kit import NDJSON, cpu_usd, entries, run_units, wallet_total
from tests.api.conftest import Api


@contextmanager
def write_lock_held(db_url: str) -> Iterator[None]:
    """Hold the database's write lock from another connection (as another replica's command
    would): SQLite's RESERVED lock (``BEGIN IMMEDIATE``), PostgreSQL's advisory write lock."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    with psycopg.connect("postgresql://" + db_url.split("://", 1)[1]) as pg:
        pg.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
        yield
        pg.rollback()


def test_a_line_is_there_right_after_its_completion(api: Api) -> None:
    tenant_id, th = api.tenant()
    nh = api.node("n1")
    for n, cpu_ms in enumerate([1200, 800, 2000], 1):
        [uid] = run_units(api, th, "n1", nh, [cpu_ms])
        lines = [e for e in entries(api.client) if e["work_unit_id"] == uid]
        assert [e["line_item_type"] for e in lines] == ["workunit_cpu"]
        assert len(entries(api.client, th)) == n
    assert wallet_total(api.client, tenant_id) == cpu_usd(1200) + cpu_usd(800) + cpu_usd(2000)


def test_billing_reads_append_nothing_and_take_no_write_lock(api: Api, db_url: str) -> None:
    tenant_id, th = api.tenant()
    nh = api.node("n1")
    [uid] = run_units(api, th, "n1", nh, [1500])
    assert [e["work_unit_id"] for e in entries(api.client)] == [uid]  # the consumer is at head
    before = api.events()
    with write_lock_held(db_url):
        r = api.client.get("/v1/billing/ledger", headers=api.admin())
        assert r.status_code == 200 and len(r.json()["entries"]) == 1, r.text
        r = api.client.get("/v1/billing/ledger", headers={**th, "Accept": NDJSON})
        assert r.status_code == 200 and r.text.count("\n") == 1, r.text
        r = api.client.get(f"/v1/billing/wallets/{tenant_id}", headers=th)
        assert r.status_code == 200 and Decimal(r.json()["total_usd"]) == cpu_usd(1500), r.text
        r = api.client.get("/v1/billing/anomalies", headers=api.admin())
        assert r.status_code == 200 and r.json()["anomalies"] == [], r.text
    assert api.events() == before

    # The consumer behind the head (a tenant.created it has not folded yet, almost surely:
    # its loop ticks twice a second), and the write lock taken before it can fold: the read
    # waits its bounded while, then answers with what is folded, still writing nothing (a
    # read that folded itself would block on the lock here).
    api.tenant("other")
    before = api.events()
    with write_lock_held(db_url):
        r = api.client.get("/v1/billing/ledger", headers=api.admin())
        assert r.status_code == 200 and len(r.json()["entries"]) == 1, r.text
    assert api.events() == before


def test_a_line_folded_by_another_replica_is_there(make_api: Callable[..., Api]) -> None:
    a, b = make_api(), make_api()  # two apps, one database: either one's consumer may fold
    tenant_id, th = a.tenant()
    nh = a.node("n1")
    [uid] = run_units(a, th, "n1", nh, [700])
    assert [e["work_unit_id"] for e in entries(b.client)] == [uid]
    assert wallet_total(b.client, tenant_id) == cpu_usd(700)
