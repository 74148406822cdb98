"""worker.population and the Celery tasks in eager mode (no Redis), on SQLite and a real PostgreSQL.

The multi-process behaviour (real workers, SIGKILL, resume after a restart) is in test_tasks_reliability.py.
"""

from __future__ import annotations

import csv
import gzip
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from cds_service.decision_log.tables import LogEntry, Verification
from cds_service.decision_log.writer import DecisionLog
from cds_service.keys import audit_key
from cds_service.population.tables import PopulationJob
from cds_service.settings import load_settings
from hooks.fhir import RecordReader, patient_id_of, patient_of_resource
from hooks.model import Model
from hooks.synthetic import PROFILES, BulkExport, write_bulk_export
from tests.worker.conftest import (
    TODAY,
    assert_scored_exactly_once,
    assessment_rows,
    chunk_rows,
    count_assessments,
    forget_worker_context,
    invoke_cli,
    job_id_of,
    settings_env,
)
from worker import population, tasks
from worker.celery_app import make_celery

AS_OF = date.fromisoformat(TODAY)


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory: pytest.TempPathFactory) -> BulkExport:
    """Every profile three times, each resource type over 3 gzipped files, plus a plain file of bad lines."""
    directory = tmp_path_factory.mktemp("mixed-export")
    export = write_bulk_export(directory, len(PROFILES) * 3, 20, seed=11, split_files=3, gzip=True)
    someone = sorted(export.profiles)[0]
    bad_lines = [
        b'{"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org"',  # not JSON, no patient
        b'{"resourceType":"Observation","id":"broken","subject":{"reference":"Patient/' + someone.encode() + b'"},"status":',
        b'{"resourceType":"Observation","id":"orphan","status":"final","code":{"text":"no subject at all"}}',
        b"   ",
    ]
    (directory / "Observation.bad.ndjson").write_bytes(b"\n".join(bad_lines) + b"\n")
    (directory / "log.ndjson").write_bytes(b'{"resourceType":"OperationOutcome"}\n')  # the Bulk Data error log is not input
    return export


@pytest.fixture(params=["sqlite", "postgresql"])
def eager_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for an eager run (no Redis): the embedded SQLite database, or the module's PostgreSQL one."""
    database = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    yield settings_env(instance_path=tmp_path / "instance", database_url=database, population_chunk_size=7)
    forget_worker_context()


def _database(env: dict[str, str]) -> str:
    return load_settings(environ=env).effective_database_url


def _worklist_ids(folder: Path) -> tuple[list[str], list[str]]:
    with (folder / "worklist.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == population.WORKLIST_COLUMNS
    from_ndjson = [orjson.loads(line)["patient_id"] for line in (folder / "worklist.ndjson").read_bytes().splitlines()]
    return [r[0] for r in rows[1:]], from_ndjson


# -- the whole job in one process ------------------------------------------------------------------


def test_eager_score_scores_every_patient_once_and_writes_the_worklist(
    eager_env: dict[str, str],
    mixed_export: BulkExport,
    engine_for: Callable[[str], Engine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one patient whose record makes the reader raise: recorded as an error, never retried
    noted = sorted(mixed_export.profiles)[0]  # the patient the fixture's broken JSON line names
    broken = next(p for p, outcome in sorted(mixed_export.expected.items()) if outcome == "likely" and p != noted)
    raised: list[str] = []
    original = RecordReader.add_ndjson_line

    def add_ndjson_line(self: Any, line: bytes | str) -> None:
        if self.record.patient_id == broken:
            raised.append(broken)
            raise RuntimeError("the reader cannot take this record")
        original(self, line)

    monkeypatch.setattr(RecordReader, "add_ndjson_line", add_ndjson_line)
    result = invoke_cli(monkeypatch, eager_env, "population", "score", str(mixed_export.directory), "--today", TODAY)
    assert result.exit_code == 0, result.output
    job_id = job_id_of(result.output)
    patients = len(mixed_export.profiles)
    engine = engine_for(_database(eager_env))

    current = assert_scored_exactly_once(engine, job_id, patients)
    assert (current["patients_scored"], current["patients_failed"]) == (patients - 1, 1)
    assert current["chunks_total"] == -(-patients // 7)  # ceil(patients / chunk size)
    assert f"{patients - 1} patients scored, 1 failed" in result.output
    assert raised == [broken]  # tried once, not retried

    rows = {r["patient_id"]: r for r in assessment_rows(engine, job_id)}
    assert set(rows) == set(mixed_export.profiles)
    assert rows[broken]["status"] == "error" and rows[broken]["error"].startswith("RuntimeError: ")
    assert rows[broken]["worklist"] is False and rows[broken]["assessment"] is None
    # every other patient met its profile's intended outcome
    for patient, expected in mixed_export.expected.items():
        if patient == broken:
            continue
        row = rows[patient]
        red_flagged = row["eligible"] and bool(row["assessment"].get("red_flags"))
        outcome = (
            "ineligible"
            if not row["eligible"]
            else "red-flag"
            if red_flagged
            else "suppressed"
            if row["suppressed"]
            else row["band"]
        )
        assert outcome == expected, (mixed_export.profiles[patient], row["assessment"])

    # the worklist: exactly the possible/likely, eligible, unsuppressed patients, most likely first
    folder = population.job_dir(Path(load_settings(environ=eager_env).instance_path), job_id)
    from_csv, from_ndjson = _worklist_ids(folder)
    assert from_csv == from_ndjson
    assert set(from_csv) == mixed_export.worklist - {broken}
    assert len(from_csv) == current["worklisted"] == len(mixed_export.worklist) - 1
    # red-flag patients first, in a section of their own, then the routine rows, most likely first
    flagged = mixed_export.red_flagged - {broken}
    assert flagged and set(from_csv[: len(flagged)]) == flagged
    scores = [rows[p]["score"] for p in from_csv[len(flagged) :]]
    assert scores == sorted(scores, reverse=True)
    with (folder / "worklist.csv").open(newline="", encoding="utf-8") as handle:
        listed = {row["patient_id"]: row["red_flags"] for row in csv.DictReader(handle)}
    assert all(listed[p] for p in flagged) and not any(listed[p] for p in set(from_csv) - flagged)
    assert not list(folder.glob("*.tmp*"))

    # the bad lines were reported and left out; the broken line that named a patient became a note
    report = orjson.loads((folder / "split.json").read_bytes())
    assert report["unreadable"] == 1 and report["without_patient"] == 1
    assert report["files"] == len(mixed_export.files) + 1
    assert report["lines"] == mixed_export.resources + 3  # the blank line is not counted
    assert report["routed"] + report["irrelevant"] + 2 == report["lines"]
    someone = sorted(mixed_export.profiles)[0]
    assert someone != broken
    assert "An NDJSON line is not valid JSON and was ignored." in rows[someone]["assessment"]["notes"]


def test_eager_score_of_the_shared_bulk_export(
    shared_data: Path, tmp_path: Path, engine_for: Callable[[str], Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """13 real Synthea patients: all assessed, none on the worklist (no radicular findings in Synthea)."""
    env = settings_env(instance_path=tmp_path / "instance")
    try:
        result = invoke_cli(monkeypatch, env, "population", "score", str(shared_data / "bulk-10-patients"), "--today", TODAY)
    finally:
        forget_worker_context()
    assert result.exit_code == 0, result.output
    job_id = job_id_of(result.output)
    engine = engine_for(_database(env))
    current = assert_scored_exactly_once(engine, job_id, 13)
    assert (current["patients_scored"], current["patients_failed"], current["worklisted"]) == (13, 0, 0)
    assert all(r["status"] == "scored" and r["assessment"] for r in assessment_rows(engine, job_id))
    folder = population.job_dir(tmp_path / "instance", job_id)
    assert _worklist_ids(folder) == ([], [])


def test_a_corrupt_gzip_file_fails_the_job_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = write_bulk_export(tmp_path / "export", 3, 5, seed=2, gzip=True)
    (export.directory / "Condition.000.ndjson.gz").write_bytes(gzip.compress(b'{"resourceType":"Condition"}\n' * 50)[:-20])
    env = settings_env(instance_path=tmp_path / "instance")
    try:
        result = invoke_cli(monkeypatch, env, "population", "score", str(export.directory))
    finally:
        forget_worker_context()
    assert result.exit_code == 0, result.output
    assert ": failed;" in result.output
    assert "Condition.000.ndjson.gz cannot be read" in result.output


def test_a_directory_without_ndjson_fails_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    env = settings_env(instance_path=tmp_path / "instance")
    try:
        result = invoke_cli(monkeypatch, env, "population", "score", str(tmp_path / "empty"))
    finally:
        forget_worker_context()
    assert ": failed;" in result.output and "no .ndjson or .ndjson.gz files" in result.output


# -- idempotency of the steps ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, engine_for: Callable[[str], Engine]) -> Engine:
    if request.param == "sqlite":
        return engine_for(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    return engine_for(request.getfixturevalue("postgres_url"))


def _rows(job_id: str, chunk: int, patients: list[str]) -> list[dict[str, Any]]:
    return [
        {"job_id": job_id, "chunk": chunk, "patient_id": p, "status": "scored", "worklist": False, "score": 0.0} for p in patients
    ]


def test_record_chunk_twice_stores_once(engine: Engine, model: Model) -> None:
    job_id = population.create_job(engine, model, "/nowhere", AS_OF)
    population.register_chunks(engine, job_id, 2)
    assert population.start_chunk(engine, job_id, 0)
    assert population.record_chunk(engine, job_id, 0, _rows(job_id, 0, ["a", "b", "c"])) is True
    # a redelivery: the same chunk again, even with different rows, changes nothing
    assert population.start_chunk(engine, job_id, 0) is False
    assert population.record_chunk(engine, job_id, 0, _rows(job_id, 0, ["a", "b", "c", "d"])) is False
    assert count_assessments(engine, job_id) == (3, 3)
    current = population.job(engine, job_id)
    assert current is not None
    assert (current["chunks_done"], current["patients_scored"], current["status"]) == (1, 3, "scoring")
    assert population.pending_chunks(engine, job_id) == [1]
    assert [c["attempts"] for c in chunk_rows(engine, job_id)] == [1, 0]
    # registering the chunks again (a split redone after a crash) keeps what was scored
    population.register_chunks(engine, job_id, 2)
    assert population.pending_chunks(engine, job_id) == [1]


def test_concurrent_record_chunk_stores_once(engine: Engine, model: Model) -> None:
    """Racing transactions on one chunk: the status guard lets exactly one of them store its rows."""
    job_id = population.create_job(engine, model, "/nowhere", AS_OF)
    population.register_chunks(engine, job_id, 1)
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []

    def store() -> None:
        barrier.wait()
        outcomes.append(population.record_chunk(engine, job_id, 0, _rows(job_id, 0, ["x", "y"])))

    threads = [threading.Thread(target=store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, False, False, True]
    assert count_assessments(engine, job_id) == (2, 2)
    current = population.job(engine, job_id)
    assert current is not None and (current["chunks_done"], current["patients_scored"]) == (1, 2)


def test_claim_finish_only_once_and_only_when_complete(engine: Engine, model: Model) -> None:
    job_id = population.create_job(engine, model, "/nowhere", AS_OF)
    assert population.claim_finish(engine, job_id) is False  # still splitting
    population.register_chunks(engine, job_id, 2)
    population.record_chunk(engine, job_id, 0, _rows(job_id, 0, ["a"]))
    assert population.claim_finish(engine, job_id) is False  # a chunk is left
    population.record_chunk(engine, job_id, 1, _rows(job_id, 1, ["b"]))
    barrier = threading.Barrier(3)
    claims: list[bool] = []

    def claim() -> None:
        barrier.wait()
        claims.append(population.claim_finish(engine, job_id))

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [False, False, True]
    assert population.claim_finish(engine, job_id) is False
    current = population.job(engine, job_id)
    assert current is not None and current["status"] == "finishing"


def test_split_is_deterministic(tmp_path: Path) -> None:
    export = write_bulk_export(tmp_path / "export", 40, 12, seed=5, split_files=2)
    files = population.export_files(export.directory)
    first = population.split(files, tmp_path / "one", 6)
    second = population.split(list(reversed(files)), tmp_path / "two", 6)
    assert first == second
    where: dict[str, set[int]] = {}
    for n in range(6):
        one = sorted((tmp_path / "one" / f"part-{n:05d}.ndjson").read_bytes().splitlines())
        two = sorted((tmp_path / "two" / f"part-{n:05d}.ndjson").read_bytes().splitlines())
        assert one == two  # the same lines in the same partition, whatever the file order
        for line in one:
            patient, _, resource = line.partition(b"\t")
            where.setdefault(patient.decode(), set()).add(n)
            assert orjson.loads(resource)["resourceType"] in (
                "Patient",
                "Condition",
                "Observation",
                "Procedure",
                "ServiceRequest",
            )
    assert set(where) == set(export.profiles)
    for patient_id, partitions in where.items():
        assert partitions == {population.partition_of(patient_id, 6)}  # one patient, one partition
    # a stable hash (CRC-32), not Python's per-process hash(): the same partition in every worker
    assert population.partition_of("7fb3f3ef-4e06-4ec6-a3db-6304784d01aa", 1000) == 3405325960 % 1000
    assert not list((tmp_path / "one").glob("*.tmp"))


PATIENT_LINES = [
    (b'{"resourceType":"Condition","subject":{"reference":"Patient/p1"}}', "p1"),
    (b'{"resourceType":"Condition","subject":{"display":"X","reference":"https://ehr.example/fhir/Patient/p2"}}', "p2"),
    (b'{"resourceType":"Condition","subject":{"reference":"Patient/p3/_history/2"}}', "p3"),
    (b'{"resourceType":"Immunization","patient":{"reference":"Patient/p4"}}', "p4"),
    (b'{"resourceType" : "Observation", "subject" : { "reference" : "Patient/p5" } }', "p5"),
    (b'{"resourceType":"Patient","id":"p6","link":[{"other":{"reference":"Patient/p7"}}]}', "p6"),
    (b'{"id":"p8","meta":{"versionId":"1"},"resourceType":"Patient"}', "p8"),
    (b'{"resourceType":"Observation","subject":{"reference":"Group/g1"}}', None),
    (b'{"resourceType":"Observation","subject":{"reference":"urn:uuid:1234"}}', None),
    (b'{"resourceType":"Observation","subject":{"reference":"NotPatient/p9"}}', None),
    (b'{"resourceType":"Patient","id":"with\\ttab"}', None),
    (b'{"resourceType":"Location","id":"l1"}', None),
]


@pytest.mark.parametrize(("line", "patient"), PATIENT_LINES)
def test_patient_of(line: bytes, patient: str | None) -> None:
    assert population.patient_of(line) == patient


@pytest.mark.parametrize(("line", "patient"), PATIENT_LINES)
def test_the_raw_line_reader_agrees_with_the_resource_reader(line: bytes, patient: str | None) -> None:
    """Partitioning reads a line's patient from its bytes; the assessment from the parsed resource: the same patient,
    except for ids the partition files cannot carry (a tab or line break), which the line reader refuses."""
    resource = orjson.loads(line)
    expected = patient_of_resource(resource)
    if expected is not None and any(c in expected for c in "\t\r\n"):
        expected = None
    assert population.patient_of(line) == expected == patient


@given(
    st.lists(st.sampled_from(["Patient/", "Group/", "/", "p1", "x", "https://ehr.example/fhir", "_history", "2", ":"]), max_size=6)
)
def test_the_byte_reference_reader_agrees_with_the_text_one(parts: list[str]) -> None:
    reference = "".join(parts)
    found = population.patient_of_reference(reference.encode())
    assert (found.decode() if found is not None else None) == patient_id_of(reference)


def test_patient_of_a_line_that_is_not_json_and_names_no_patient() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        population.patient_of(b'{"resourceType":"Observation","status":')


def test_irrelevant_files_are_dropped_but_stray_lines_in_them_are_routed(tmp_path: Path) -> None:
    encounter = b'{"resourceType":"Encounter","id":"e%d","subject":{"reference":"Patient/p1"}}'
    stray = b'{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}'
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "Encounter.ndjson").write_bytes(b"\n".join([encounter % 1, stray, encounter % 2]))  # no final newline
    counts = population.split(population.export_files(tmp_path / "in"), tmp_path / "out", 1)
    assert counts == {"lines": 3, "routed": 1, "irrelevant": 2, "without_patient": 0, "unreadable": 0}
    assert (tmp_path / "out" / "part-00000.ndjson").read_bytes() == b"p1\t" + stray + b"\n"


def test_patients_are_counted_from_files_whose_first_resource_is_a_patient(tmp_path: Path) -> None:
    export = write_bulk_export(tmp_path / "export", 9, 5, seed=3)
    (export.directory / "Patient.000.ndjson").rename(export.directory / "1.ndjson")  # servers name files as they like
    assert population.count_patients(population.export_files(export.directory)) == 9


# -- the beat-driven tasks through the eager app -----------------------------------------------------


@pytest.fixture
def eager_app(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The Celery app without Redis (tasks run in-process) on the module's PostgreSQL database."""
    env = settings_env(instance_path=tmp_path / "instance", database_url=postgres_url)
    for name in [k for k in os.environ if k.startswith("SPINE_CDS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SPINE_CDS_"):
            monkeypatch.setenv(name, value)
    app = make_celery(load_settings())
    app.set_current()
    app.set_default()
    yield env
    forget_worker_context()
    app.close()


def test_verify_and_anchor_and_purge_expired(eager_app: dict[str, str], engine_for: Callable[[str], Engine]) -> None:
    settings = load_settings()
    engine = engine_for(settings.effective_database_url)
    with engine.begin() as connection:  # the module's database is shared: start from an empty log
        for table in ("checkpoints", "anchors", "verifications", "log_chain", "access_log", "merkle_nodes", "tree_checkpoints"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
    # the two oldest entries were written before the retention period
    old = datetime.now(UTC) - timedelta(days=settings.retention_days + 1)
    aged = DecisionLog(engine, b"pseudonym-key", audit_key(settings), clock=lambda: old)
    log = DecisionLog(engine, b"pseudonym-key", audit_key(settings))
    for n in range(3):
        (aged if n < 2 else log).record_access("auditor", "search", {"page": n})
    anchors = settings.effective_anchor_path

    first = tasks.verify_and_anchor.delay().get()
    assert first == {"ok": True, "entries": 3, "anchored": 3, "checkpoint": 3}  # the tree of 3 entries, signed
    lines = anchors.read_bytes().splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["seq"] == 3
    again = tasks.verify_and_anchor.delay().get()
    assert again == {"ok": True, "entries": 3, "anchored": None, "checkpoint": None}  # head already anchored and signed
    assert len(anchors.read_bytes().splitlines()) == 1
    with engine.connect() as connection:
        verifications = connection.execute(Verification.__table__.select().order_by(Verification.id)).all()
    assert [(v.ok, v.entries, v.head_seq) for v in verifications] == [(True, 3, 3), (True, 3, 3)]

    assert tasks.purge_expired.delay().get() == 2
    records = [orjson.loads(line) for line in anchors.read_bytes().splitlines()]
    assert len(records) == 2 and records[1]["kind"] == "checkpoint" and records[1]["seq"] == 2
    assert tasks.purge_expired.delay().get() == 0
    after = tasks.verify_and_anchor.delay().get()
    assert after["ok"] is True and after["entries"] == 1


def test_purge_expired_deletes_nothing_from_a_backdated_log(
    eager_app: dict[str, str], engine_for: Callable[[str], Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """Entries whose times were moved back past retention do not verify: the task deletes nothing."""
    settings = load_settings()
    engine = engine_for(settings.effective_database_url)
    with engine.begin() as connection:
        for table in ("checkpoints", "anchors", "verifications", "log_chain", "access_log", "merkle_nodes", "tree_checkpoints"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
    log = DecisionLog(engine, b"pseudonym-key", audit_key(settings))
    for n in range(3):
        log.record_access("auditor", "search", {"page": n})
    old = datetime.now(UTC) - timedelta(days=settings.retention_days + 1)
    with engine.begin() as connection:
        connection.execute(update(LogEntry).values(created_at=old))

    assert tasks.purge_expired.delay().get() == 0
    assert "purge refused: entry 1" in caplog.text
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(LogEntry)).scalar_one() == 3


def test_cleanup_stale_resumes_a_stalled_job_and_abandons_an_old_one(
    eager_app: dict[str, str], tmp_path: Path, engine_for: Callable[[str], Engine], model: Model
) -> None:
    settings = load_settings()
    engine = engine_for(settings.effective_database_url)
    export = write_bulk_export(tmp_path / "export", 20, 8, seed=9)
    stalled = population.create_job(engine, model, str(export.directory), AS_OF)
    abandoned = population.create_job(engine, model, str(export.directory), AS_OF)
    fresh = population.create_job(engine, model, str(export.directory), AS_OF)  # moving: left alone
    with engine.begin() as connection:
        for job_id, created, updated in (
            (stalled, timedelta(hours=7), timedelta(hours=7)),
            (abandoned, timedelta(days=8), timedelta(days=8)),
        ):
            connection.execute(
                update(PopulationJob)
                .where(PopulationJob.id == job_id)
                .values(created_at=datetime.now(UTC) - created, updated_at=datetime.now(UTC) - updated)
            )

    assert tasks.cleanup_stale.delay().get() == 1
    assert_scored_exactly_once(engine, stalled, 20)
    gone = population.job(engine, abandoned)
    assert gone is not None and gone["status"] == "failed" and gone["error"] == "abandoned: no progress for a week"
    untouched = population.job(engine, fresh)
    assert untouched is not None and untouched["status"] == "splitting"
    assert count_assessments(engine, abandoned) == (0, 0)
    # nothing is stale any more (the stalled job is done)
    assert tasks.cleanup_stale.delay().get() == 0


def test_cleanup_stale_resumes_a_stalled_export_by_polling_again(
    eager_app: dict[str, str], engine_for: Callable[[str], Engine], model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import export_tasks

    settings = load_settings()
    engine = engine_for(settings.effective_database_url)
    job_id = population.create_job(engine, model, '{"fhir": "https://ehr.example.org/fhir"}', AS_OF)
    with engine.begin() as connection:
        connection.execute(
            update(PopulationJob)
            .where(PopulationJob.id == job_id)
            .values(status="exporting", updated_at=datetime.now(UTC) - timedelta(hours=7))
        )
    resumed: list[str] = []
    monkeypatch.setattr(export_tasks.export_kickoff, "delay", resumed.append)
    assert tasks.cleanup_stale.delay().get() == 1
    assert resumed == [job_id]
