"""The Alembic migrations build exactly the schema of qcnode.db, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from qcnode.cli import main
from qcnode.config import Settings
from qcnode.db import Base, make_engine, upgrade


def assert_schema_matches(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            tables = set(inspect(conn).get_table_names())
            head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert head is not None


def test_db_upgrade_cli_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCNODE_DATA_DIR", str(tmp_path))
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0  # idempotent
    settings = Settings(data_dir=tmp_path)
    assert_schema_matches(settings)
    engine = make_engine(settings)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


@pytest.mark.postgres
def test_db_upgrade_on_postgres(postgres) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=postgres.create_database("schema"))
    upgrade(settings)
    upgrade(settings)
    assert_schema_matches(settings)


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgres(postgres) -> None:  # type: ignore[no-untyped-def]
    """Processes starting together (ingest nodes, workers) all migrate safely."""
    import os
    import subprocess
    import sys

    url = postgres.create_database("race")
    env = {**os.environ, "QCNODE_DATABASE_URL": url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "qcnode.cli", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert_schema_matches(Settings(database_url=url))
