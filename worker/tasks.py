"""Celery tasks. Each takes ids, is idempotent, and is safe to run twice (acks_late redelivery).

Transient failures (a database or file-system hiccup) are retried with exponential backoff; a bad
patient record is reported in the job's results and never retried.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import threading
import zlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from celery import Task, current_app, shared_task
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from cds_service.decision_log.chain import PurgeRefused, anchor, purge, verify_and_record
from cds_service.decision_log.transparency import extend_and_sign, tree_problem
from cds_service.runtime import Runtime
from cds_service.settings import Settings, load_settings
from worker import population

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


# the export's first task (worker/export_tasks.py); it polls when the export was already kicked off
EXPORT_KICKOFF = "population.export_kickoff"


def reliable_task(name: str, *, soft_time_limit: int) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Acknowledged when done, given back if the worker dies, retried with backoff on transient errors."""
    return shared_task(
        name=name,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(OperationalError, OSError),
        retry_backoff=2,
        retry_backoff_max=300,
        retry_jitter=True,
        max_retries=5,
        soft_time_limit=soft_time_limit,
        time_limit=soft_time_limit + 60,
    )


_contexts: dict[str, Runtime] = {}
_contexts_lock = threading.Lock()


def context() -> Runtime:
    """One runtime (engine, model, keys) per process and configuration. A process runs under one configuration; when it
    changes (an eager run under new settings), the engine of the one before is disposed, not left open."""
    settings_json = load_settings().model_dump_json()
    with _contexts_lock:
        found = _contexts.get(settings_json)
        if found is None:
            forget_contexts()
            settings = Settings.model_validate(json.loads(settings_json))
            found = Runtime(settings)
            _contexts[settings_json] = found
    return found


def forget_contexts() -> None:
    """Dispose of the engines this process built (its connections closed) and forget them."""
    for old in _contexts.values():
        old.close()
    _contexts.clear()


@reliable_task("population.split", soft_time_limit=3000)
def split_job(job_id: str, source: str) -> int:
    """Partition the export by patient, register the chunks, then enqueue them (after the commit)."""
    ctx = context()
    current = population.job(ctx.engine, job_id)
    if current is None or current["status"] not in ("splitting", "scoring"):
        return 0
    if current["status"] == "splitting":
        try:
            files = population.export_files(Path(source))
        except (population.JobError, FileNotFoundError, NotADirectoryError) as exc:
            population.fail(ctx.engine, job_id, str(exc))
            return 0
        folder = population.job_dir(ctx.settings.instance_path, job_id)
        try:
            partitions = max(1, math.ceil(population.count_patients(files) / ctx.settings.population_chunk_size))
            counts = population.split(files, folder, partitions)
        except (population.JobError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            population.fail(ctx.engine, job_id, str(exc))  # a corrupt file: retrying cannot help
            return 0
        (folder / "split.json").write_bytes(orjson.dumps({"files": len(files), "partitions": partitions, **counts}))
        if counts["unreadable"] or counts["without_patient"]:
            log.warning(
                "job %s: %d unreadable lines and %d resources without a patient were left out",
                job_id,
                counts["unreadable"],
                counts["without_patient"],
            )
        population.register_chunks(ctx.engine, job_id, partitions)
    pending = population.pending_chunks(ctx.engine, job_id)
    for number in pending:
        score_chunk.delay(job_id, number)
    if not pending:
        finish_if_complete(job_id)
    return len(pending)


@reliable_task("population.score_chunk", soft_time_limit=600)
def score_chunk(job_id: str, number: int) -> bool:
    ctx = context()
    if not population.start_chunk(ctx.engine, job_id, number):
        return False  # done already: a redelivery
    part = population.job_dir(ctx.settings.instance_path, job_id) / f"part-{number:05d}.ndjson"
    rows = population.assess_partition(ctx.model, part, _as_of(ctx.engine, job_id), number, job_id)
    stored = population.record_chunk(ctx.engine, job_id, number, rows)
    finish_if_complete(job_id)
    return stored


@lru_cache(maxsize=64)
def _as_of(engine: Engine, job_id: str) -> date:
    """A job's assessment date, read once per process and job: it never changes."""
    current = population.job(engine, job_id)
    if current is None:
        raise LookupError(job_id)
    return date.fromisoformat(current["as_of"])


def finish_if_complete(job_id: str) -> None:
    if population.claim_finish(context().engine, job_id):
        finish_job.delay(job_id)


@reliable_task("population.finish", soft_time_limit=1200)
def finish_job(job_id: str) -> int:
    ctx = context()
    current = population.job(ctx.engine, job_id)
    if current is None or current["status"] != "finishing":
        return 0
    worklist = population.write_worklist(ctx.engine, job_id, population.job_dir(ctx.settings.instance_path, job_id))
    return worklist.patients


@reliable_task("population.cleanup_stale", soft_time_limit=300)
def cleanup_stale() -> int:
    """Resume jobs that stopped moving (a lost message, a restart); give up on very old ones."""
    ctx = context()
    resumed = 0
    for stale in population.stale_jobs(ctx.engine, ctx.settings.stale_job_seconds):
        age = datetime.now(UTC) - (stale["created_at"] if stale["created_at"].tzinfo else stale["created_at"].replace(tzinfo=UTC))
        if age > timedelta(days=7):
            population.fail(ctx.engine, stale["id"], "abandoned: no progress for a week")
            continue
        resume(stale["id"])
        resumed += 1
    return resumed


def resume(job_id: str) -> None:
    """Pick a job up where it stopped."""
    current = population.job(context().engine, job_id)
    if current is None:
        return
    if current["status"] == "exporting":
        # found by name in the app's registry (which includes the export tasks): they build on this module,
        # which does not import them back; and unlike send_task it runs in-process when tasks run eagerly
        current_app.tasks[EXPORT_KICKOFF].delay(job_id)
    elif current["status"] in ("splitting", "scoring"):
        split_job.delay(job_id, current["source"])
    elif current["status"] == "finishing":
        finish_job.delay(job_id)


@reliable_task("log.verify_and_anchor", soft_time_limit=1800)
def verify_and_anchor() -> dict[str, Any]:
    ctx = context()
    report = verify_and_record(ctx.engine, ctx.audit_key, ctx.anchors, tree_problem)
    if not report.ok:
        log.error("decision log verification failed: %s", report.problem)
        return {"ok": False, "problem": str(report.problem)}
    record = anchor(ctx.engine, ctx.audit_key, ctx.anchors)
    signed = extend_and_sign(ctx.engine, ctx.checkpoint_signer)  # the Merkle tree and its signed checkpoint
    return {
        "ok": True,
        "entries": report.entries,
        "anchored": record["seq"] if record else None,
        "checkpoint": signed.size if signed else None,
    }


@reliable_task("log.purge", soft_time_limit=1800)
def purge_expired() -> int:
    ctx = context()
    cutoff = datetime.now(UTC) - timedelta(days=ctx.settings.retention_days)
    try:
        return purge(ctx.engine, ctx.audit_key, ctx.anchors, cutoff)
    except PurgeRefused as refused:
        # not retried: the entries due for deletion do not verify, and deleting them would hide that
        log.error("%s; nothing was deleted", refused)
        return 0
