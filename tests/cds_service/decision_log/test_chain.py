"""The tamper-evident log: every kind of tampering is caught and the right entry is named."""

from __future__ import annotations

import multiprocessing
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from cds_service.cli import main
from cds_service.database import make_engine
from cds_service.decision_log.chain import (
    GENESIS,
    AnchorFile,
    PurgeRefused,
    anchor,
    entry_hash,
    payload_hash,
    purge,
    row_of,
    verify,
    verify_and_record,
)
from cds_service.decision_log.tables import Decision, Feedback, LogEntry
from cds_service.decision_log.writer import DecisionLog

KEY = b"test-audit-key"


def decision(number: int, **values: object) -> Decision:
    row = Decision(
        service_id="spine-knee-patient-view",
        hook="patient-view",
        hook_instance=str(uuid.uuid4()),
        issuer="https://ehr.example.org",
        user_id="Practitioner/dr-1",
        patient_pseudonym=f"{number:064x}",
        model_id="spine-origin-knee-pain",
        model_version="1.0.0",
        model_hash="sha256:" + "0" * 64,
        band="likely",
        outcome="cards",
        status_code=200,
        card_uuids=[str(uuid.uuid4())],
        suggestion_uuids=[str(uuid.uuid4())],
        assessment={"score": 3.2, "findings": [{"signal": "lumbar_radiculopathy", "references": [f"Condition/{number}"]}]},
        cards=[{"summary": "Knee pain may be referred from the lumbar spine: consider spine evaluation"}],
        input_digest="hmac-sha256:" + "1" * 64,
        latency_ms=4.25 + number,
    )
    for name, value in values.items():
        setattr(row, name, value)
    return row


def feedback_for(logged: Decision) -> Feedback:
    return Feedback(
        decision_id=logged.id,
        service_id=logged.service_id,
        card_uuid=logged.card_uuids[0],
        outcome="overridden",
        outcome_timestamp="2026-11-24T10:00:00Z",
        accepted_suggestions=[],
        override_code="patient-declines",
        override_system="urn:spine-cds:override-reason",
        override_comment="Prefers to wait",
        issuer=logged.issuer,
        patient_pseudonym=logged.patient_pseudonym,
    )


@pytest.fixture
def anchors(tmp_path: Path) -> AnchorFile:
    return AnchorFile(tmp_path / "anchors.ndjson")


@pytest.fixture
def log(engine: Engine) -> DecisionLog:
    """Entries 1-6 are decisions 1-6, entry 7 feedback on decision 2, entry 8 an auditor's search."""
    decision_log = DecisionLog(engine, b"pseudonym-key", KEY)
    logged = [decision_log.append(decision(n)) for n in range(1, 7)]
    assert decision_log.add_feedback(feedback_for(logged[1]))
    decision_log.record_access("auditor-1", "page.search", {"band": "likely"})
    return decision_log


@pytest.fixture
def aged_log(engine: Engine) -> DecisionLog:
    """The entries of `log`, the first four written 3000 days ago."""
    old = datetime.now(UTC) - timedelta(days=3000)
    aged = DecisionLog(engine, b"pseudonym-key", KEY, clock=lambda: old)
    current = DecisionLog(engine, b"pseudonym-key", KEY)
    logged = [aged.append(decision(n)) for n in range(1, 5)] + [current.append(decision(n)) for n in range(5, 7)]
    assert current.add_feedback(feedback_for(logged[1]))
    current.record_access("auditor-1", "page.search", {"band": "likely"})
    return current


def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """The settings `spine-cds audit ...` needs to read this log."""
    return {
        "SPINE_CDS_DATABASE_URL": database_url,
        "SPINE_CDS_AUDIT_KEY": KEY.decode(),
        "SPINE_CDS_INSTANCE_PATH": str(tmp_path / "instance"),
        "SPINE_CDS_ANCHOR_PATH": str(tmp_path / "anchors.ndjson"),
    }


def badges(engine: Engine) -> list[bool]:
    """The recorded verification outcomes, oldest first (the dashboard shows the last)."""
    with engine.connect() as connection:
        return [bool(ok) for ok in connection.execute(text("SELECT ok FROM verifications ORDER BY id")).scalars()]


def sql(engine: Engine, *statements: str) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def test_an_untouched_log_verifies(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    assert anchor(engine, KEY, anchors) is not None
    report = verify(engine, KEY, anchors)
    assert report.ok, report.problem
    assert (report.entries, report.first_seq, report.head_seq, report.anchors) == (8, 1, 8, 1)


def test_editing_a_field_through_sql_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, "UPDATE decisions SET band = 'unlikely' WHERE id = 3")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None
    assert (problem.what, problem.seq, problem.kind, problem.entry_id) == ("edited", 3, "decision", 3)


def test_editing_feedback_or_access_rows_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, "UPDATE feedback SET override_comment = 'no comment'")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq, problem.kind) == ("edited", 7, "feedback")
    sql(engine, "UPDATE feedback SET override_comment = 'Prefers to wait'", "UPDATE access_log SET username = 'someone-else'")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq, problem.kind) == ("edited", 8, "access")


def test_deleting_an_entry_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(
        engine,
        "DELETE FROM issued_cards WHERE decision_id = 4",
        "DELETE FROM log_chain WHERE kind = 'decision' AND entry_id = 4",
        "DELETE FROM decisions WHERE id = 4",
    )
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None
    assert (problem.what, problem.seq) == ("deleted", 4)
    assert "entry 4 of the chain" in problem.detail


def test_deleting_only_the_row_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, "DELETE FROM issued_cards WHERE decision_id = 5", "DELETE FROM decisions WHERE id = 5")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq, problem.entry_id) == ("deleted", 5, 5)


def test_swapping_two_entries_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(
        engine,
        "UPDATE log_chain SET seq = -1 WHERE seq = 2",
        "UPDATE log_chain SET seq = 2 WHERE seq = 3",
        "UPDATE log_chain SET seq = 3 WHERE seq = -1",
    )
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None
    assert (problem.what, problem.seq, problem.entry_id) == ("reordered", 2, 3)


def test_inserting_a_row_outside_the_chain_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(
        engine,
        "INSERT INTO decisions (id, created_at, service_id, outcome, status_code, card_uuids, suggestion_uuids, cards,"
        " latency_ms) VALUES (99, '2026-11-24 10:00:00', 'spine-knee-patient-view', 'cards', 200, '[]', '[]', '[]', 1.0)",
    )
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.kind, problem.entry_id) == ("inserted", "decision", 99)


def test_inserting_a_forged_chain_entry_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    with engine.connect() as connection:
        head = connection.execute(text("SELECT entry_hash FROM log_chain WHERE seq = 8")).scalar_one()
    sql(
        engine,
        "INSERT INTO decisions (id, created_at, service_id, outcome, status_code, card_uuids, suggestion_uuids, cards,"
        " latency_ms) VALUES (99, '2026-11-24 10:00:00', 'spine-knee-patient-view', 'no-card', 200, '[]', '[]', '[]', 1.0)",
        "INSERT INTO log_chain (seq, kind, entry_id, created_at, payload_hash, prev_hash, entry_hash)"
        f" VALUES (9, 'decision', 99, '2026-11-24 10:00:00', '{'a' * 64}', '{head}', '{'b' * 64}')",
    )
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq, problem.entry_id) == ("inserted", 9, 99)


def test_rewriting_a_row_and_its_recorded_hash_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, "UPDATE decisions SET band = 'possible' WHERE id = 2")
    with engine.connect() as connection:
        row = row_of(connection, "decision", 2)
    assert row is not None
    sql(engine, f"UPDATE log_chain SET payload_hash = '{payload_hash(row)}' WHERE seq = 2")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("edited", 2)


def test_cutting_the_tail_is_caught_against_the_anchor(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    anchor(engine, KEY, anchors)
    sql(
        engine,
        "DELETE FROM log_chain WHERE seq >= 7",
        "DELETE FROM feedback",
        "DELETE FROM access_log",
    )
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None
    assert (problem.what, problem.seq) == ("truncated", 7)
    assert "entry 8 was anchored" in problem.detail


def test_an_edited_anchor_file_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    anchor(engine, KEY, anchors)
    anchors.path.write_text(anchors.path.read_text().replace('"seq":8', '"seq":80'))
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and problem.what == "edited" and "anchor line 1" in problem.detail


def test_purging_keeps_the_rest_verifiable_and_a_removed_checkpoint_is_caught(
    aged_log: DecisionLog, engine: Engine, anchors: AnchorFile
) -> None:
    log = aged_log
    # decision 2 has feedback at entry 7, so the purge stops before it: only entry 1 goes
    assert purge(engine, KEY, anchors, datetime.now(UTC) - timedelta(days=2000)) == 1
    report = verify(engine, KEY, anchors)
    assert report.ok, report.problem
    assert (report.checkpoint_seq, report.first_seq, report.entries) == (1, 2, 7)
    log.append(decision(7))  # appends continue after a purge
    assert verify(engine, KEY, anchors).ok
    sql(engine, "DELETE FROM checkpoints")
    problem = verify(engine, KEY, AnchorFile(anchors.path.with_name("elsewhere.ndjson"))).problem
    assert problem is not None and (problem.what, problem.seq) == ("deleted", 1)


def test_cli_verify_exits_0_when_intact_and_1_naming_the_entry(
    log: DecisionLog, engine: Engine, tmp_path: Path, database_url: str
) -> None:
    env = cli_env(database_url, tmp_path)
    runner = CliRunner()
    anchored = runner.invoke(main, ["audit", "anchor"], env=env)
    assert anchored.exit_code == 0 and "anchored entry 8" in anchored.output
    intact = runner.invoke(main, ["audit", "verify"], env=env)
    assert intact.exit_code == 0, intact.output
    assert "intact: 8 entries" in intact.output
    sql(engine, "UPDATE decisions SET outcome = 'no-card' WHERE id = 6")
    broken = runner.invoke(main, ["audit", "verify"], env=env)
    assert broken.exit_code == 1
    assert "entry 6 (decision 6): edited" in broken.output
    assert badges(engine) == [True, False]


def _append_many(database_url: str, worker: int, count: int) -> None:
    engine = make_engine(database_url)
    decision_log = DecisionLog(engine, b"pseudonym-key", KEY)
    for n in range(count):
        logged = decision_log.append(decision(worker * 1000 + n))
        if n % 5 == 0:
            decision_log.add_feedback(feedback_for(logged))
    engine.dispose()


def test_four_processes_appending_at_once_leave_one_gapless_chain(engine: Engine, database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(database_url, w, 40)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    report = verify(engine, KEY)
    assert report.ok, report.problem
    assert report.entries == 4 * (40 + 8)
    with engine.connect() as connection:
        seqs = connection.execute(text("SELECT seq FROM log_chain ORDER BY seq")).scalars().all()
    assert seqs == list(range(1, 4 * 48 + 1))


# -- what decides a card or its feedback is in the chain too ------------------------------------


def test_re_pointing_an_issued_card_to_another_decision_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, "UPDATE issued_cards SET decision_id = 5 WHERE decision_id = 3")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None
    assert (problem.what, problem.seq, problem.entry_id) == ("edited", 3, 3)
    assert "recorded for decision 5" in problem.detail


def test_deleting_an_issued_card_row_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, "DELETE FROM issued_cards WHERE decision_id = 2")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("deleted", 2)


def test_inserting_an_issued_card_row_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    sql(engine, f"INSERT INTO issued_cards (card_uuid, decision_id) VALUES ('{uuid.uuid4()}', 4)")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("inserted", 4)


def test_backdating_the_log_is_caught_and_the_purge_refuses(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    """Moving every entry's time back to 2001 would make the next retention purge delete the whole log."""
    sql(engine, "UPDATE log_chain SET created_at = '2001-01-01 00:00:00'")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("edited", 1)
    with pytest.raises(PurgeRefused) as refused:
        purge(engine, KEY, anchors, datetime.now(UTC) - timedelta(days=2000))
    assert refused.value.problem.seq == 1
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM log_chain")).scalar_one() == 8
        assert connection.execute(text("SELECT count(*) FROM checkpoints")).scalar_one() == 0


def test_the_cli_purge_refuses_a_backdated_log(log: DecisionLog, engine: Engine, tmp_path: Path, database_url: str) -> None:
    sql(engine, "UPDATE log_chain SET created_at = '2001-01-01 00:00:00'")
    env = cli_env(database_url, tmp_path)
    result = CliRunner().invoke(main, ["audit", "purge"], env=env)
    assert result.exit_code == 1
    assert "purge refused" in result.output and "entry 1" in result.output


def _rewrite_as(engine: Engine, format_: int) -> None:
    """What the service wrote at an older entry format: payloads without the columns added since (0005 for
    format 1, 0007 for format 2), v1 hashes without the time for format 1, v2 hashes with it for format 2."""
    added = {
        1: {"decision": {"reuse_of", "reason"}, "feedback": {"tenant"}},
        2: {"decision": {"reason"}},
    }[format_]
    with engine.begin() as connection:
        prev = GENESIS
        columns = (LogEntry.seq, LogEntry.kind, LogEntry.entry_id, LogEntry.created_at)
        for entry in connection.execute(select(*columns).order_by(LogEntry.seq)).all():
            row = row_of(connection, entry.kind, entry.entry_id)
            assert row is not None
            row = {k: v for k, v in row.items() if k not in added.get(entry.kind, set())}
            payload = payload_hash(row)
            at = entry.created_at if format_ >= 2 else None
            hashed = entry_hash(KEY, entry.kind, entry.entry_id, payload, prev, at)
            connection.execute(
                text("UPDATE log_chain SET format = :f, payload_hash = :p, prev_hash = :prev, entry_hash = :h WHERE seq = :s"),
                {"f": format_, "p": payload, "prev": prev, "h": hashed, "s": entry.seq},
            )
            prev = hashed


def test_entries_of_format_1_still_verify_and_their_times_are_checked(
    log: DecisionLog, engine: Engine, anchors: AnchorFile
) -> None:
    """A log written before revision 0005 verifies after the upgrade; its entries' times, outside their
    hash, must agree with their rows' times, and the columns added since must stay empty."""
    _rewrite_as(engine, 1)
    assert verify(engine, KEY, anchors).ok
    log.append(decision(7))  # later entries are of the current format, linked after the old ones
    assert verify(engine, KEY, anchors).ok

    sql(engine, "UPDATE log_chain SET created_at = '2001-01-01 00:00:00' WHERE seq <= 3")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("edited", 1)
    assert "disagrees with its row's time" in problem.detail
    with pytest.raises(PurgeRefused):
        purge(engine, KEY, anchors, datetime.now(UTC) - timedelta(days=2000))

    sql(
        engine,
        "UPDATE log_chain SET created_at = (SELECT created_at FROM decisions WHERE decisions.id = log_chain.entry_id)"
        " WHERE seq <= 3",
    )
    assert verify(engine, KEY, anchors).ok
    sql(engine, "UPDATE decisions SET reuse_of = 1 WHERE id = 4")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("edited", 4)


def test_entries_of_format_2_verify_and_a_reason_set_later_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    """A log written before revision 0007 (its decisions without a reason) verifies after the upgrade; a reason
    written into one of those rows afterwards is an edit."""
    _rewrite_as(engine, 2)
    assert verify(engine, KEY, anchors).ok
    log.append(decision(7))
    assert verify(engine, KEY, anchors).ok
    sql(engine, "UPDATE decisions SET reason = 'red-flag' WHERE id = 2")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and problem.what == "edited" and "reason was set after it was logged" in problem.detail


def test_a_deleted_anchor_file_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    anchor(engine, KEY, anchors)
    assert verify(engine, KEY, anchors).ok
    anchors.path.unlink()
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and problem.what == "deleted"
    assert "anchor file" in problem.detail and "is missing" in problem.detail


def test_a_line_removed_from_the_anchor_file_is_caught(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    anchor(engine, KEY, anchors)
    log.append(decision(7))
    anchor(engine, KEY, anchors)
    _, second_line = anchors.path.read_text().splitlines()
    anchors.path.write_text(second_line + "\n")
    problem = verify(engine, KEY, anchors).problem
    assert problem is not None and (problem.what, problem.seq) == ("deleted", 8)
    assert "missing from the anchor file" in problem.detail


def _unreadable_row(engine: Engine) -> str:
    """Make decision 3 a row the database holds but cannot hand back; returns the statement used."""
    if engine.dialect.name == "sqlite":
        statement = "UPDATE decisions SET cards = '{not json' WHERE id = 3"
    else:  # a time PostgreSQL stores but Python cannot represent
        statement = "UPDATE decisions SET created_at = '20000-01-01 00:00:00+00' WHERE id = 3"
    sql(engine, statement)
    return statement


def test_an_unreadable_row_fails_verification_and_the_badge_shows_it(
    log: DecisionLog, engine: Engine, tmp_path: Path, database_url: str
) -> None:
    env = cli_env(database_url, tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["audit", "verify"], env=env).exit_code == 0
    _unreadable_row(engine)
    broken = runner.invoke(main, ["audit", "verify"], env=env)
    assert broken.exit_code == 1
    assert "entry 3 (decision 3): edited: the decision row cannot be read" in broken.output
    assert badges(engine) == [True, False]


def test_an_unreadable_chain_entry_fails_verification(log: DecisionLog, engine: Engine, anchors: AnchorFile) -> None:
    if engine.dialect.name == "sqlite":
        sql(engine, "UPDATE log_chain SET created_at = 'yesterday' WHERE seq = 5")
    else:
        sql(engine, "UPDATE log_chain SET created_at = '20000-01-01 00:00:00+00' WHERE seq = 5")
    report = verify_and_record(engine, KEY, anchors)
    assert report.problem is not None and report.problem.what == "unreadable"
    assert badges(engine) == [False]


def test_a_verification_that_cannot_finish_is_recorded_as_failed(
    log: DecisionLog, engine: Engine, anchors: AnchorFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever stops a verification (here the anchor file cannot be read), the badge turns red."""
    anchor(engine, KEY, anchors)

    def unreadable(self: AnchorFile, key: bytes) -> list[Any]:
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(AnchorFile, "read", unreadable)
    report = verify_and_record(engine, KEY, anchors)
    assert report.problem is not None and "could not finish (PermissionError" in report.problem.detail
    assert badges(engine) == [False]
