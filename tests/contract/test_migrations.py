"""The Alembic head equals the table definitions, on every backend, and migrating twice
(two replicas starting together) is harmless."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from control_plane.db.engine import Database
from control_plane.db.migrate import current_revision, head_revision, is_migrated, upgrade
from control_plane.db.tables import metadata


def test_head_matches_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"the migrations and control_plane/db/tables.py differ: {diff}"


def test_upgrade_is_idempotent(db: Database) -> None:
    upgrade(db)
    upgrade(db)
    assert current_revision(db) == head_revision()
    assert is_migrated(db)
