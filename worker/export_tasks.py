"""Celery tasks that export a population from a FHIR server, then hand the files to the scoring tasks.

`population.export_kickoff(job_id)` starts the export (or, when the job already has a status URL,
goes straight to polling) and enqueues `population.export_poll(job_id)`, which asks the server once
and enqueues itself again with a countdown until the export is complete. It then downloads the files
into `<job dir>/export`, moves the job to "splitting" with that folder as its source, and enqueues
`population.split`. In eager mode (no Redis) a countdown would not delay anything, so the poll task
waits in-process instead.

The job's `source` column holds the export parameters as JSON while it is "exporting" (see
`ExportSpec`: the private key is a file path, never its contents) and the export folder afterwards,
which is what `worker.tasks.resume` expects of a job that is splitting or scoring.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update
from sqlalchemy.engine import Engine

from cds_service.database import utcnow
from cds_service.population.tables import PopulationJob
from cds_service.runtime import Runtime
from worker import population
from worker.bulk_export import MAX_WAIT, BulkClient, BulkExportError, ExportSpec, Manifest, describe
from worker.tasks import EXPORT_KICKOFF, context, reliable_task, split_job

log = logging.getLogger(__name__)

SOURCE_LIMIT = 2000  # the width of population_jobs.source
MAX_TRANSIENT_POLLS = 5  # consecutive 429/5xx/network failures of the status URL before giving up
MAX_EXPORT_SECONDS = 24 * 3600


# -- the job's row ------------------------------------------------------------------------------


def _while_exporting(engine: Engine, job_id: str, **values: object) -> bool:
    """Update the job only while it is still exporting (never a job that failed or moved on meanwhile)."""
    with engine.begin() as connection:
        changed = connection.execute(
            update(PopulationJob)
            .where(PopulationJob.id == job_id, PopulationJob.status == "exporting")
            .values(updated_at=utcnow(), **values)
        ).rowcount
    return bool(changed)


def fail_export(engine: Engine, job_id: str, error: str) -> bool:
    """`population.fail`, for a job that is still exporting."""
    log.warning("population job %s: export failed: %s", job_id, error)
    return _while_exporting(engine, job_id, status="failed", error=error[:SOURCE_LIMIT])


def export_dir(ctx: Runtime, job_id: str) -> Path:
    return (population.job_dir(ctx.settings.instance_path, job_id) / "export").resolve()


# -- tasks --------------------------------------------------------------------------------------


@reliable_task(EXPORT_KICKOFF, soft_time_limit=600)
def export_kickoff(job_id: str) -> str | None:
    """Start the export, keep its status URL with the job, then poll."""
    ctx = context()
    current = population.job(ctx.engine, job_id)
    if current is None or current["status"] != "exporting":
        return None
    try:
        spec = ExportSpec.from_json(current["source"])
        if spec.status_url is None:
            with BulkClient.from_spec(spec) as client:
                started = replace(spec, status_url=client.kickoff(spec.group, spec.types), kicked_off_at=time.time())
                if len(started.to_json()) > SOURCE_LIMIT:
                    client.delete(str(started.status_url))
                    raise BulkExportError(
                        f"the export status URL is too long to keep ({len(str(started.status_url))} characters)"
                    )
            if not _while_exporting(ctx.engine, job_id, source=started.to_json()):
                return None
            spec = started
    except BulkExportError as exc:
        fail_export(ctx.engine, job_id, str(exc))
        return None
    export_poll.delay(job_id)
    return spec.status_url


@reliable_task("population.export_poll", soft_time_limit=3000)
def export_poll(job_id: str, attempt: int = 0, transient: int = 0) -> str:
    """Poll once; again later (a countdown, or a wait in eager mode) until complete, then download and split."""
    ctx = context()
    eager = bool(export_poll.app.conf.task_always_eager)
    # a countdown is held by the worker unacknowledged: it must stay far below the visibility timeout
    cap = min(MAX_WAIT, ctx.settings.worker_visibility_timeout / 10)
    while True:
        step = _poll_once(ctx, job_id, attempt, transient)
        if isinstance(step, str):
            return step
        wait, transient = min(step[0], cap), step[1]
        attempt += 1
        if not eager:
            export_poll.apply_async((job_id, attempt, transient), countdown=wait)
            return "polling"
        time.sleep(wait)  # eager mode has no queue to delay a message in: wait for the remote server here


def _poll_once(ctx: Runtime, job_id: str, attempt: int, transient: int) -> tuple[float, int] | str:
    """(seconds to wait, consecutive transient failures) while the export runs, else how the poll ended."""
    current = population.job(ctx.engine, job_id)
    if current is None or current["status"] != "exporting":
        return "stopped"
    try:
        spec = ExportSpec.from_json(current["source"])
        if spec.status_url is None:
            raise BulkExportError("the export was never kicked off")
        if spec.kicked_off_at and time.time() - spec.kicked_off_at > MAX_EXPORT_SECONDS:
            raise BulkExportError(f"the export did not complete within {MAX_EXPORT_SECONDS // 3600} hours")
        with BulkClient.from_spec(spec) as client:
            result = client.poll(spec.status_url, attempt)
            if isinstance(result, Manifest):
                return _complete(ctx, job_id, spec, client, result)
        transient = transient + 1 if result.transient else 0
        if transient > MAX_TRANSIENT_POLLS:
            raise BulkExportError(f"the export status failed {transient} times in a row: {result.transient}")
    except BulkExportError as exc:
        fail_export(ctx.engine, job_id, str(exc))
        return "failed"
    if result.transient:
        log.info("population job %s: export status failed (%s); polling again in %.0f s", job_id, result.transient, result.wait)
    else:
        log.info("population job %s: export in progress (%s)", job_id, result.progress or "no progress given")
    _while_exporting(ctx.engine, job_id)  # shows the job is alive
    return result.wait, transient


def _complete(ctx: Runtime, job_id: str, spec: ExportSpec, client: BulkClient, manifest: Manifest) -> str:
    out = export_dir(ctx, job_id)
    try:
        downloaded = client.download(manifest, out)
    except SoftTimeLimitExceeded:
        # the files downloaded so far are kept; the next poll finds the manifest again and goes on
        export_poll.apply_async((job_id,), countdown=0)
        return "continuing"
    if downloaded.errors:
        log.warning("population job %s: the server reported %d export errors (in %s)", job_id, downloaded.errors, out / "errors")
    (out / "export.json").write_text(json.dumps(describe(manifest, downloaded, spec), indent=2), encoding="utf-8")
    # only one of two redelivered polls moves the job on; from here on the job's source is the folder
    if not _while_exporting(ctx.engine, job_id, status="splitting", source=str(out)):
        return "stopped"
    assert spec.status_url is not None
    client.delete(spec.status_url)
    split_job.delay(job_id, str(out))
    return "downloaded"
