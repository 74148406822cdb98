"""The decision log's own database for each test: emptied first (PostgreSQL's is shared by the session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cds_service.database import make_engine, upgrade


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    tables = (
        "log_chain, checkpoints, anchors, verifications, issued_cards, feedback, access_log, decisions, merkle_nodes, tree_checkpoints"
    )
    with engine.begin() as connection:  # the PostgreSQL database is shared by the session: start empty
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        else:
            for table in tables.split(", "):
                connection.execute(text(f"DELETE FROM {table}"))
    yield engine
    engine.dispose()
