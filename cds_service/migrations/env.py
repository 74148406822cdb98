"""Alembic environment: runs on the connection the application hands over."""

from __future__ import annotations

from alembic import context

from cds_service.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cds_service.db.upgrade(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
