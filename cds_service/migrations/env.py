"""Alembic environment: runs on the connection the application hands over."""

from __future__ import annotations

from alembic import context

from cds_service.auditor import tables as _auditor  # noqa: F401  (each feature's tables join Base.metadata)
from cds_service.cds_hooks import tables as _cds_hooks  # noqa: F401
from cds_service.database import Base
from cds_service.decision_log import tables as _decision_log  # noqa: F401
from cds_service.population import tables as _population  # noqa: F401

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cds_service.database.upgrade(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
