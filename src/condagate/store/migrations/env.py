"""Alembic environment: migrations run on the connection handed over by ``condagate.store.db``."""

from alembic import context

from condagate.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # offline or CLI use: build an engine from the configured URL
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://").connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
