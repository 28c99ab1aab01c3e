"""The Alembic migrations produce exactly the models' schema (no drift), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from condagate.store.db import make_engine, migrate
from condagate.store.models import Base

from servers import postgres_database


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_models(tmp_path: Path, backend: str):
    url = f"sqlite:///{tmp_path / 'drift.db'}" if backend == "sqlite" else postgres_database()
    if not url:
        pytest.skip("PostgreSQL is not installed here")
    engine = make_engine(url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent: a restart applies nothing twice
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == []
    finally:
        engine.dispose()
