"""Alembic environment: the same migrations for SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import context

from qcnode.config import Settings
from qcnode.db import Base, make_engine

config = context.config
MIGRATION_LOCK = 0x71C0DE  # pg advisory lock key for migrations
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or ""
    engine = make_engine(Settings(database_url=url))
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn,
                target_metadata=target_metadata,
                render_as_batch=conn.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                if conn.dialect.name == "postgresql":
                    # several processes may start at once (ingest nodes, workers): one
                    # migrates, the others wait here and then find the schema at head
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
