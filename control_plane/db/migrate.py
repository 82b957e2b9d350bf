"""Apply Alembic migrations (on start of the control plane, and from tests and tools)."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from control_plane.db.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATE_LOCK_KEY = 0x6B72616B6F + 1


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(db: Database) -> None:
    """Bring the schema to head. On PostgreSQL a session advisory lock stops two replicas
    starting at once from migrating concurrently."""
    cfg = alembic_config()
    with db.engine.connect() as conn:
        if db.is_postgres:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATE_LOCK_KEY})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if db.is_postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATE_LOCK_KEY})
                conn.commit()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        try:
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no version table: never migrated
            conn.rollback()
            return None
        return str(value) if value is not None else None


def is_migrated(db: Database) -> bool:
    return current_revision(db) == head_revision()
