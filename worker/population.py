"""Scoring a FHIR Bulk Data export, patient by patient, without holding the export in memory.

1. split: stream every NDJSON file (plain or gzipped, one resource type per file, possibly several
   files per type) once, and append each line to one of N partition files chosen by a stable hash of
   its patient id. A partition holds a few hundred patients. Lines of resource types the reader
   ignores (Encounter, Immunization, Claim, ...) are counted and dropped here, so the scoring tasks
   neither store nor parse them.
2. score: each partition is one chunk: its lines are grouped by patient in memory and every patient is
   assessed with the same `hooks` code the web service uses. The chunk's assessments, its status and
   the job's counters are written in one transaction that only a pending chunk can take, so a chunk
   redelivered after a crash changes nothing the second time: every patient is scored exactly once.
3. finish: write the worklist (CSV and NDJSON) of eligible `possible` and `likely` patients who have no
   spine referral or recent lumbar MRI.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from cds_service.database import utcnow, width
from cds_service.population.tables import PopulationAssessment, PopulationChunk, PopulationJob
from cds_service.spreadsheet import safe_cell
from hooks.assessment import Assessor
from hooks.fhir import RELEVANT_TYPES, RecordReader
from hooks.model import Model

# The patient a resource belongs to, read from the raw line without parsing the JSON: the reference of
# its `subject`, else of its `patient` (Immunization, AllergyIntolerance, ...). Each pattern starts with
# a literal the regex engine scans for quickly; one alternation of both keys is several times slower.
_SUBJECT_REFERENCE = re.compile(rb'"subject"\s*:\s*\{[^{}]*?"reference"\s*:\s*"([^"\t]*)"')
_PATIENT_REFERENCE = re.compile(rb'"patient"\s*:\s*\{[^{}]*?"reference"\s*:\s*"([^"\t]*)"')
# the resource type when it is the first member, as Bulk Data servers write it
_LEADING_TYPE = re.compile(rb'\s*\{\s*"resourceType"\s*:\s*"([A-Za-z]+)"')
_RELEVANT = frozenset(t.encode() for t in RELEVANT_TYPES)
# lines read and routed between two writes to the partition files
_BLOCK_BYTES = 4 << 20


class JobError(RuntimeError):
    """A job that cannot go on (no export files, unreadable input)."""


def job_dir(root: Path, job_id: str) -> Path:
    return root / "population" / job_id


def export_files(path: Path) -> list[Path]:
    """The NDJSON files of an export directory (or a single file), sorted for a stable order."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")) and not p.name.startswith("log."))
    if not files:
        raise JobError(f"no .ndjson or .ndjson.gz files in {path}")
    return files


def _open(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile reads bytes
    return path.open("rb")


def patient_of_reference(reference: bytes) -> bytes | None:
    """The id a Patient reference names (relative, absolute or versioned), as `hooks.fhir` reads it."""
    head, sep, tail = reference.rpartition(b"Patient/")
    if not sep or (head and not head.endswith(b"/")):
        return None
    return tail.partition(b"/")[0] or None


def _referenced_patient(line: bytes) -> bytes | None:
    for pattern in (_SUBJECT_REFERENCE, _PATIENT_REFERENCE):
        found = pattern.search(line)
        if found is not None:
            patient = patient_of_reference(found.group(1))
            if patient is not None:
                return patient
    return None


def patient_of(line: bytes) -> str | None:
    """The patient a raw NDJSON line belongs to: a Patient's own id, or the patient its subject names.

    Raises orjson.JSONDecodeError for a line that names no patient and is not JSON.
    """
    patient = _referenced_patient(line)
    if patient is not None:
        return patient.decode(errors="replace")
    resource = orjson.loads(line)
    if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
        resource_id = resource.get("id")
        # a tab or a line break would break the partition file's `patient TAB line` layout
        if isinstance(resource_id, str) and resource_id and not any(c in resource_id for c in "\t\r\n"):
            return resource_id
    return None


def partition_of(patient_id: str, partitions: int) -> int:
    return zlib.crc32(patient_id.encode()) % partitions


def leading_type(path: Path) -> str | None:
    """The resource type of a file's first resource (Bulk Data files hold one type each), None if unknown."""
    with _open(path) as lines:
        for line in lines:
            if line.strip():
                found = _LEADING_TYPE.match(line)
                return found.group(1).decode() if found else None
    return None


def count_patients(files: list[Path]) -> int:
    """The Patient resources in the export: the lines of the files whose first resource is a Patient."""
    total = 0
    for path in files:
        if leading_type(path) == "Patient":
            with _open(path) as lines:
                total += sum(1 for line in lines if line.strip())
    return total


class _Partitions:
    """The partition files being written, with the lines routed to each since the last write."""

    def __init__(self, out: Path, partitions: int) -> None:
        self.partitions = partitions
        self.paths = [out / f"part-{n:05d}.ndjson" for n in range(partitions)]
        self.handles = [path.with_name(path.name + ".tmp").open("wb") for path in self.paths]
        self.pending: list[list[bytes]] = [[] for _ in range(partitions)]

    def write(self) -> None:
        for handle, lines in zip(self.handles, self.pending, strict=True):
            if lines:
                handle.write(b"".join(lines))
                lines.clear()

    def close(self) -> None:
        for handle in self.handles:
            handle.close()

    def publish(self) -> None:
        # renamed only when complete, so a split interrupted half-way is redone, not trusted
        for path in self.paths:
            path.with_name(path.name + ".tmp").replace(path)


def split(files: list[Path], out: Path, partitions: int) -> dict[str, int]:
    """Route every line to its patient's partition file (`part-00001.ndjson`: `patient-id TAB line`).

    Returns counts: `lines` read (not blank), `routed` to a partition, `irrelevant` (of a resource type
    the reader ignores, dropped), `without_patient` (no Patient reference, not a Patient) and
    `unreadable` (not JSON, and no patient to give it to). A file that cannot be decompressed raises
    JobError: retrying cannot help.
    """
    out.mkdir(parents=True, exist_ok=True)
    parts = _Partitions(out, partitions)
    counts = {"lines": 0, "routed": 0, "irrelevant": 0, "without_patient": 0, "unreadable": 0}
    try:
        for path in files:
            try:
                _split_file(path, parts, counts)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise JobError(f"{path.name} cannot be read: {exc}") from exc
    finally:
        parts.close()
    parts.publish()
    return counts


def _split_file(path: Path, parts: _Partitions, counts: dict[str, int]) -> None:
    # Bulk Data files hold one resource type each: in a file of a type the reader ignores, every line
    # that starts like the first one is dropped unread; any other line is routed as usual
    file_type = leading_type(path)
    skip = b'{"resourceType":"' + file_type.encode() + b'"' if file_type and file_type.encode() not in _RELEVANT else None
    pending, partitions, crc32 = parts.pending, parts.partitions, zlib.crc32
    subject, patient_key = _SUBJECT_REFERENCE.search, _PATIENT_REFERENCE.search
    lines, blank, irrelevant, routed = 0, 0, 0, 0
    with _open(path) as stream:
        while block := stream.readlines(_BLOCK_BYTES):
            if not block[-1].endswith(b"\n"):
                block[-1] += b"\n"
            lines += len(block)
            for line in block:
                if skip is not None and line.startswith(skip):
                    irrelevant += 1
                    continue
                # the common case inline: a subject reference to a Patient
                found = subject(line) or patient_key(line)
                patient = patient_of_reference(found.group(1)) if found is not None else None
                if patient is None:
                    if not line.strip():
                        blank += 1
                        continue
                    patient = _slow_route(line, counts)
                    if patient is None:
                        continue
                pending[crc32(patient) % partitions].append(patient + b"\t" + line)
                routed += 1
            parts.write()
    counts["lines"] += lines - blank
    counts["routed"] += routed
    counts["irrelevant"] += irrelevant


def _slow_route(line: bytes, counts: dict[str, int]) -> bytes | None:
    """A line that names no Patient in its subject: a Patient resource, or one to count and leave out."""
    try:
        patient = patient_of(line.strip())
    except orjson.JSONDecodeError:
        counts["unreadable"] += 1
        return None
    if patient is None:
        counts["without_patient"] += 1
        return None
    return patient.encode()


def _patients(part: Path) -> Iterator[tuple[str, list[bytes]]]:
    grouped: dict[str, list[bytes]] = {}
    with part.open("rb") as lines:
        for line in lines:
            patient, _, resource = line.rstrip(b"\n").partition(b"\t")
            grouped.setdefault(patient.decode(errors="replace"), []).append(resource)
    yield from grouped.items()


def assess_partition(model: Model, part: Path, today: date, chunk: int, job_id: str) -> list[dict[str, Any]]:
    """One row per patient; a patient whose record breaks the reader is reported, not retried."""
    assessor = Assessor(model)
    rows: list[dict[str, Any]] = []
    for patient_id, lines in _patients(part):
        base = {"job_id": job_id, "chunk": chunk, "patient_id": patient_id[:200]}
        try:
            reader = RecordReader(model, patient_id)
            for line in lines:
                reader.add_ndjson_line(line)
            assessment = assessor.assess(reader.record, today)
        except Exception as exc:  # one bad record must not stop the chunk
            # every row has the same keys: the chunk's rows go to the database as one executemany
            rows.append(
                {
                    **base,
                    "status": "error",
                    "eligible": None,
                    "band": None,
                    "score": None,
                    "suppressed": None,
                    "worklist": False,
                    "assessment": None,
                    "error": f"{type(exc).__name__}: {exc}"[: width(PopulationAssessment.error)],
                }
            )
            continue
        rows.append(
            {
                **base,
                "status": "scored",
                "eligible": assessment.eligible,
                "band": assessment.band,
                "score": assessment.score,
                "suppressed": assessment.suppressed,
                # a red-flag patient is listed (first, flagged), never as a routine row
                "worklist": assessment.actionable or assessment.red_flagged,
                "assessment": assessment.to_dict(),
                "error": None,
            }
        )
    return rows


# -- the job's state in the database ------------------------------------------------------------


def create_job(engine: Engine, model: Model, source: str, today: date) -> str:
    job_id = str(uuid.uuid4())
    with engine.begin() as connection:
        connection.execute(
            insert(PopulationJob).values(
                id=job_id,
                created_at=utcnow(),
                updated_at=utcnow(),
                source=source[: width(PopulationJob.source)],
                status="splitting",
                chunks_total=0,
                chunks_done=0,
                patients_scored=0,
                patients_failed=0,
                worklisted=0,
                model_id=model.id,
                model_version=model.version,
                model_hash=model.hash,
                as_of=today.isoformat(),
            )
        )
    return job_id


def job(engine: Engine, job_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(select(PopulationJob).where(PopulationJob.id == job_id)).first()
    return dict(row._mapping) if row else None


def set_status(connection: Connection, job_id: str, status: str, **values: Any) -> None:
    connection.execute(
        update(PopulationJob).where(PopulationJob.id == job_id).values(status=status, updated_at=utcnow(), **values)
    )


def register_chunks(engine: Engine, job_id: str, partitions: int) -> None:
    with engine.begin() as connection:
        existing = connection.execute(select(func.count()).where(PopulationChunk.job_id == job_id)).scalar_one()
        if not existing:
            connection.execute(
                insert(PopulationChunk),
                [
                    {"job_id": job_id, "number": n, "status": "pending", "patients": 0, "attempts": 0, "updated_at": utcnow()}
                    for n in range(partitions)
                ],
            )
        set_status(connection, job_id, "scoring", chunks_total=partitions)


def pending_chunks(engine: Engine, job_id: str) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(PopulationChunk.number)
                .where(PopulationChunk.job_id == job_id, PopulationChunk.status == "pending")
                .order_by(PopulationChunk.number)
            ).scalars()
        )


def start_chunk(engine: Engine, job_id: str, chunk: int) -> bool:
    """Count an attempt at a pending chunk; False when the chunk is done already (or unknown).

    One statement instead of reading the chunk first; `attempts` above 1 shows a chunk was redelivered
    (its worker died, or the message came back after the visibility timeout).
    """
    with engine.begin() as connection:
        return bool(
            connection.execute(
                update(PopulationChunk)
                .where(PopulationChunk.job_id == job_id, PopulationChunk.number == chunk, PopulationChunk.status == "pending")
                .values(attempts=PopulationChunk.attempts + 1, updated_at=utcnow())
            ).rowcount
        )


def record_chunk(engine: Engine, job_id: str, chunk: int, rows: list[dict[str, Any]]) -> bool:
    """Store a chunk's assessments once. False when the chunk was already done (a redelivery)."""
    with engine.begin() as connection:
        taken = connection.execute(
            update(PopulationChunk)
            .where(PopulationChunk.job_id == job_id, PopulationChunk.number == chunk, PopulationChunk.status == "pending")
            .values(status="done", patients=len(rows), updated_at=utcnow())
        ).rowcount
        if not taken:
            return False
        if rows:
            connection.execute(insert(PopulationAssessment), rows)
        connection.execute(
            update(PopulationJob)
            .where(PopulationJob.id == job_id)
            .values(
                chunks_done=PopulationJob.chunks_done + 1,
                patients_scored=PopulationJob.patients_scored + sum(1 for r in rows if r["status"] == "scored"),
                patients_failed=PopulationJob.patients_failed + sum(1 for r in rows if r["status"] == "error"),
                updated_at=utcnow(),
            )
        )
    return True


def claim_finish(engine: Engine, job_id: str) -> bool:
    """Only one caller moves a fully scored job on to writing its worklist."""
    with engine.begin() as connection:
        return bool(
            connection.execute(
                update(PopulationJob)
                .where(
                    PopulationJob.id == job_id,
                    PopulationJob.status == "scoring",
                    PopulationJob.chunks_done == PopulationJob.chunks_total,
                )
                .values(status="finishing", updated_at=utcnow())
            ).rowcount
        )


@dataclass(frozen=True)
class Worklist:
    csv: Path
    ndjson: Path
    patients: int


WORKLIST_COLUMNS = (
    "patient_id",
    "red_flags",
    "band",
    "score",
    "findings",
    "alternatives",
    "missing_inputs",
    "model_version",
)


def write_worklist(engine: Engine, job_id: str, out: Path) -> Worklist:
    """Eligible possible/likely patients without a spine referral, most likely first; before them, in a
    section of their own, eligible patients whose record holds a red flag (`red_flags` names its codes)."""
    out.mkdir(parents=True, exist_ok=True)
    query = (
        select(
            PopulationAssessment.patient_id,
            PopulationAssessment.band,
            PopulationAssessment.score,
            PopulationAssessment.assessment,
        )
        .where(PopulationAssessment.job_id == job_id, PopulationAssessment.worklist.is_(True))
        .order_by(PopulationAssessment.score.desc(), PopulationAssessment.patient_id)
    )
    csv_path, ndjson_path = out / "worklist.csv", out / "worklist.ndjson"
    # written under names of their own and renamed when complete: a redelivered finish task running
    # beside the first one cannot interleave lines, and a reader never sees half a worklist
    scratch = f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    csv_tmp, ndjson_tmp = csv_path.with_name(csv_path.name + scratch), ndjson_path.with_name(ndjson_path.name + scratch)
    count = 0
    with (
        engine.connect() as connection,
        csv_tmp.open("w", newline="", encoding="utf-8") as csv_file,
        ndjson_tmp.open("wb") as nd,
    ):
        writer = csv.writer(csv_file)
        writer.writerow(WORKLIST_COLUMNS)
        # two passes over the listed rows: the red-flag section first, then the routine rows
        for red_flag_section in (True, False):
            for row in connection.execute(query):
                assessment = row.assessment or {}
                red_flags = [str(r.get("code", "")).rpartition("|")[2] for r in assessment.get("red_flags", [])]
                if bool(red_flags) != red_flag_section:
                    continue
                entry = _worklist_entry(row, assessment, red_flags)
                nd.write(orjson.dumps(entry) + b"\n")
                writer.writerow([_cell(entry[c]) for c in WORKLIST_COLUMNS])
                count += 1
    csv_tmp.replace(csv_path)
    ndjson_tmp.replace(ndjson_path)
    with engine.begin() as connection:
        set_status(connection, job_id, "done", worklisted=count)
    return Worklist(csv_path, ndjson_path, count)


def _worklist_entry(row: Any, assessment: dict[str, Any], red_flags: list[str]) -> dict[str, Any]:
    return {
        "patient_id": row.patient_id,
        "red_flags": red_flags,
        "band": row.band,
        "score": row.score,
        # what counted: a finding counted with a stronger one of its episode adds 0 points (model 2.0)
        "findings": [f["label"] for f in assessment.get("findings", []) if f.get("points", f.get("weight"))],
        "alternatives": [a["label"] for a in assessment.get("alternatives", [])],
        "missing_inputs": assessment.get("missing_inputs", []),
        "model_version": (assessment.get("model") or {}).get("version"),
    }


def _cell(value: Any) -> str:
    text = "; ".join(value) if isinstance(value, list) else "" if value is None else str(value)
    return str(safe_cell(text))


def fail(engine: Engine, job_id: str, error: str) -> None:
    with engine.begin() as connection:
        set_status(connection, job_id, "failed", error=error[: width(PopulationJob.error)])


def stale_jobs(engine: Engine, older_than_seconds: int) -> list[dict[str, Any]]:
    cutoff = datetime.now(UTC).timestamp() - older_than_seconds
    with engine.connect() as connection:
        rows = connection.execute(
            select(PopulationJob).where(PopulationJob.status.in_(("exporting", "splitting", "scoring", "finishing")))
        ).all()
    out = []
    for row in rows:
        updated = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC)
        if updated.timestamp() < cutoff:
            out.append(dict(row._mapping))
    return out
