"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL: ``KRAKO_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
is the server; each run creates a migrated template database and every test gets a fresh clone,
dropped afterwards. Without a reachable server the PostgreSQL half is skipped with the reason,
unless ``KRAKO_TEST_REQUIRE_POSTGRES=1`` (CI) makes that an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.db.engine import Database, create_database
from control_plane.db.migrate import upgrade

PG_URL = os.environ.get("KRAKO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("KRAKO_TEST_REQUIRE_POSTGRES", "") == "1"
BACKENDS = [b for b in os.environ.get("KRAKO_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]


def _pg_conninfo(dbname: str) -> str:
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{dbname}"


def _sqlalchemy_url(conninfo: str) -> str:
    return "postgresql+psycopg://" + conninfo.split("://", 1)[1]


class PgServer:
    """One PostgreSQL server for the run: a migrated template, cloned per test."""

    def __init__(self) -> None:
        import psycopg

        self.psycopg = psycopg
        self.run_id = uuid.uuid4().hex[:8]
        self.template = f"krako_tpl_{self.run_id}"
        self.created: list[str] = []
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        db = create_database(_sqlalchemy_url(_pg_conninfo(self.template)), pool_size=1)
        upgrade(db)
        db.dispose()
        self.counter = 0

    def fresh(self) -> str:
        self.counter += 1
        name = f"krako_t_{self.run_id}_{self.counter}"
        with self.psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def drop(self, name: str) -> None:
        with self.psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.drop(self.template)


_pg_state: dict[str, PgServer | str] = {}


def _pg_server() -> PgServer:
    if "server" in _pg_state:
        return _pg_state["server"]  # type: ignore[return-value]
    if "skip" in _pg_state:
        pytest.skip(str(_pg_state["skip"]))
    try:
        server = PgServer()
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {PG_URL}: {exc}"
        if REQUIRE_PG:
            pytest.fail(f"{reason} (KRAKO_TEST_REQUIRE_POSTGRES=1)")
        _pg_state["skip"] = reason
        pytest.skip(reason)
    _pg_state["server"] = server
    return server


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    server = _pg_state.get("server")
    if isinstance(server, PgServer):
        server.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "skip" in _pg_state:
        terminalreporter.write_line(f"NOTE: PostgreSQL half skipped: {_pg_state['skip']}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on the backend under test (SQLAlchemy URL)."""
    if backend == "sqlite":
        path = tmp_path / "krako.db"
        db = create_database(f"sqlite:///{path}", pool_size=1)
        upgrade(db)
        db.dispose()
        yield f"sqlite:///{path}"
        return
    server = _pg_server()
    name = server.fresh()
    try:
        yield _sqlalchemy_url(_pg_conninfo(name))
    finally:
        server.drop(name)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = create_database(db_url, pool_size=5)
    yield database
    database.dispose()
