"""Command-tier fixtures: a database on the test backend whose clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from control_plane.billing.prices import ensure_billing
from control_plane.capacity.mode import ensure_state
from control_plane.clock import ManualClock
from control_plane.db.engine import Database, create_database
from control_plane.db.uow import write_transaction


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed_db(db_url: str, clock: ManualClock) -> Iterator[Database]:
    database = create_database(db_url, pool_size=2, clock=clock)
    with write_transaction(database) as uow:
        ensure_state(uow)
        ensure_billing(uow, False, True, Decimal("0.000050"))
    yield database
    database.dispose()
