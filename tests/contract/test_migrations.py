"""The Alembic head equals the models (``control_plane/db/models.py``) on every backend, server
defaults included, and migrating twice (two replicas starting together) is harmless."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, inspect

from control_plane.db import models, tables
from control_plane.db.engine import Database
from control_plane.db.migrate import current_revision, head_revision, is_migrated, upgrade
from control_plane.db.models import metadata


def _same_server_default(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    # SQLite stores DEFAULT '' (ledger_entries.sub_key) as ('') and Alembic's SQLite comparer
    # unquotes only non-empty literals, so the empty string would read as a change. Every other
    # default is left to Alembic (None).
    if context.dialect.name == "sqlite" and rendered_metadata_default == "":
        return inspected_default not in ("''", "('')")
    return None


def test_head_matches_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": _same_server_default}
        )
        diff = compare_metadata(context, metadata)
    assert diff == [], f"the migrations and control_plane/db/models.py differ: {diff}"


def test_upgrade_is_idempotent(db: Database) -> None:
    upgrade(db)
    upgrade(db)
    assert current_revision(db) == head_revision()
    assert is_migrated(db)


def test_tables_are_the_models_tables() -> None:
    assert tables.metadata is models.metadata
    exposed = {name: getattr(tables, name) for name in tables.__all__ if name != "metadata"}
    assert exposed == dict(metadata.tables)
    by_model = {inspect(m).local_table.name: inspect(m).local_table for m in _table_models()}
    assert by_model == exposed


def _table_models() -> list[type[models.TableModel]]:
    return models.TableModel.__subclasses__()


def test_models_carry_no_python_side_defaults() -> None:
    # Core INSERTs then bind exactly the columns they name; defaults live in the database.
    for table in metadata.tables.values():
        for column in table.columns:
            assert column.default is None, f"{table.name}.{column.name}"
            assert column.onupdate is None, f"{table.name}.{column.name}"
