"""Upgrading a decision log that already holds entries keeps every entry verifiable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from cds_service.database import MIGRATIONS, make_engine, upgrade
from cds_service.decision_log.chain import FORMAT, GENESIS, AnchorFile, entry_hash, payload_hash, verify
from cds_service.decision_log.tables import Decision
from cds_service.decision_log.writer import DecisionLog
from tests.conftest import scratch_postgres

KEY = b"migration-audit-key"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of its own: the migrations are run from the start."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
        yield engine
        engine.dispose()
        return
    with scratch_postgres("spine_cds_migration") as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def _upgrade_to(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_a_log_written_at_revision_0004_verifies_after_the_upgrade(fresh_engine: Engine, tmp_path: Path) -> None:
    _upgrade_to(fresh_engine, "0004")
    row = {
        "id": 1,
        "created_at": "2026-11-01 10:00:00.000000",
        "service_id": "spine-knee-patient-view",
        "hook": "patient-view",
        "hook_instance": "d1b7c8e2-0000-4000-8000-000000000001",
        "issuer": "https://ehr.example.org",
        "tenant": None,
        "user_id": "Practitioner/dr-1",
        "patient_pseudonym": "a" * 64,
        "model_id": None,
        "model_version": None,
        "model_hash": None,
        "band": None,
        "outcome": "no-card",
        "status_code": 200,
        "card_uuids": [],
        "suggestion_uuids": [],
        "assessment": None,
        "cards": [],
        "input_digest": "hmac-sha256:" + "1" * 64,
        "latency_ms": 3.5,
    }
    with fresh_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO decisions (id, created_at, service_id, hook, hook_instance, issuer, user_id, patient_pseudonym,"
                " outcome, status_code, card_uuids, suggestion_uuids, cards, input_digest, latency_ms) VALUES (1,"
                " :created_at, :service_id, :hook, :hook_instance, :issuer, :user_id, :patient_pseudonym, :outcome,"
                " :status_code, '[]', '[]', '[]', :input_digest, :latency_ms)"
            ),
            row,
        )
        # read back as the service reads it (typed columns), without the columns revisions 0005 and 0007 add
        columns = [c for c in Decision.__table__.c if c.key not in ("reuse_of", "reason")]
        stored = dict(connection.execute(select(*columns)).mappings().one())
        payload = payload_hash(stored)
        connection.execute(
            text(
                "INSERT INTO log_chain (seq, kind, entry_id, created_at, payload_hash, prev_hash, entry_hash)"
                " VALUES (1, 'decision', 1, :at, :payload, :prev, :hash)"
            ),
            {
                "at": row["created_at"],
                "payload": payload,
                "prev": GENESIS,
                "hash": entry_hash(KEY, "decision", 1, payload, GENESIS),
            },
        )

    upgrade(fresh_engine)

    anchors = AnchorFile(tmp_path / "anchors.ndjson")
    assert verify(fresh_engine, KEY, anchors).ok
    with fresh_engine.connect() as connection:
        assert connection.execute(text("SELECT format FROM log_chain")).scalars().all() == [1]
    # the service goes on appending entries of the new format after the old ones
    DecisionLog(fresh_engine, b"pseudonym-key", KEY).record_access("auditor-1", "page.search", {})
    report = verify(fresh_engine, KEY, anchors)
    assert report.ok, report.problem
    assert report.entries == 2
    with fresh_engine.connect() as connection:
        assert connection.execute(text("SELECT format FROM log_chain ORDER BY seq")).scalars().all() == [1, FORMAT]
