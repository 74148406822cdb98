"""`spine-cds population`: score whole populations from Bulk Data exports, locally or on the workers.

The worker modules are imported by the commands that use them, so `spine-cds --help` stays quick."""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cds_service.cli.common import open_runtime

if TYPE_CHECKING:
    from cds_service.runtime import Runtime


@click.group()
def population() -> None:
    """Score whole populations from FHIR Bulk Data exports."""


def _runtime(*, migrate: bool) -> Runtime:
    """The runtime, with the Celery app of its settings made current (the tasks run eagerly without Redis)."""
    from worker.celery_app import make_celery

    runtime = open_runtime(migrate=migrate)
    celery = make_celery(runtime.settings)
    celery.set_current()
    celery.set_default()
    return runtime


def _follow(engine: Any, job_id: str, runner: Any = None) -> dict[str, Any]:
    """Show a progress bar until the job ends; `runner` runs the job in this process (no Redis)."""
    import threading
    import time as clock

    from worker import population as jobs

    failure: list[BaseException] = []

    def run() -> None:
        try:
            runner()
        except BaseException as exc:  # reported below, after the bar
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True) if runner else None
    if thread:
        thread.start()
    with click.progressbar(length=1, label="queued", show_pos=True, item_show_func=lambda s: s) as bar:
        while True:
            current = jobs.job(engine, job_id) or {}
            total = max(1, current.get("chunks_total") or 1)
            bar.length = total
            bar.label = str(current.get("status") or "queued")  # exporting, splitting, scoring, finishing
            bar.update(current.get("chunks_done", 0) - bar.pos, f"{current.get('patients_scored', 0)} patients")
            if current.get("status") in ("done", "failed") or (thread and not thread.is_alive()):
                break
            clock.sleep(0.2)  # a progress display refresh, not synchronisation
    if thread:
        thread.join()
    if failure:
        raise click.ClickException(f"the job failed: {failure[0]}")
    return jobs.job(engine, job_id) or {}


def _report(settings: Any, job: dict[str, Any]) -> None:
    from worker import population as jobs

    click.echo(
        f"job {job['id']}: {job['status']}; {job['patients_scored']} patients scored, {job['patients_failed']} failed, "
        f"{job['worklisted']} on the worklist"
    )
    if job.get("error"):
        click.echo(f"error: {job['error']}", err=True)
    if job["status"] == "done":
        folder = jobs.job_dir(settings.instance_path, job["id"])
        click.echo(f"worklist: {folder / 'worklist.csv'} and {folder / 'worklist.ndjson'}")


@population.command("score")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Assess as of this date.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job with a progress bar.")
def population_score(path: Path, today: datetime | None, wait: bool) -> None:
    """Score every patient of a Bulk Data export directory (NDJSON, possibly split and gzipped)."""
    from worker import population as jobs
    from worker.tasks import split_job

    with _runtime(migrate=True) as runtime:
        settings, engine = runtime.settings, runtime.engine
        job_id = jobs.create_job(engine, runtime.model, str(path.resolve()), (today.date() if today else date.today()))
        click.echo(f"job {job_id} created for {path}")
        eager = not settings.redis_url
        if eager:
            _report(settings, _follow(engine, job_id, runner=lambda: split_job.delay(job_id, str(path.resolve()))))
            return
        split_job.delay(job_id, str(path.resolve()))  # after the job row is committed
        if wait:
            _report(settings, _follow(engine, job_id))


@population.command("status")
@click.argument("job_id")
def population_status(job_id: str) -> None:
    """Show a job's status and counts."""
    from worker import population as jobs

    with open_runtime(migrate=False) as runtime:
        found = jobs.job(runtime.engine, job_id)
        if found is None:
            raise click.ClickException(f"no job {job_id}")
        _report(runtime.settings, found)


@population.command("resume")
@click.argument("job_id")
def population_resume(job_id: str) -> None:
    """Pick an interrupted job up where it stopped (chunks already scored are not scored again)."""
    from worker import population as jobs
    from worker.tasks import resume

    with _runtime(migrate=True) as runtime:
        settings, engine = runtime.settings, runtime.engine
        if jobs.job(engine, job_id) is None:
            raise click.ClickException(f"no job {job_id}")
        if settings.redis_url:
            resume(job_id)
            _report(settings, _follow(engine, job_id))
        else:
            _report(settings, _follow(engine, job_id, runner=lambda: resume(job_id)))


@population.command("export")
@click.option("--fhir-base", required=True, help="The FHIR server's base URL, e.g. https://ehr.example.org/fhir.")
@click.option("--group", default=None, help="Export this Group's patients (Group/ID/$export) instead of the whole system.")
@click.option("--client-id", required=True, help="The SMART Backend Services client id registered with the server.")
@click.option(
    "--private-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The client's RSA (RS384) or P-384 (ES384) private key: a PEM or JWK file. Only its path is stored.",
)
@click.option("--kid", default=None, help="The key id to sign with (default: the JWK's kid, else the key's thumbprint).")
@click.option("--jku", default=None, help="The URL of the client's JWK Set, sent in the assertion's header.")
@click.option("--token-url", default=None, help="The token endpoint (default: from .well-known/smart-configuration).")
@click.option(
    "--scope",
    default=None,
    help="Scopes to ask for (default: system/<Type>.read for the exported types; SMART v2 servers take system/<Type>.rs).",
)
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Assess as of this date.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job with a progress bar.")
def population_export(
    fhir_base: str,
    group: str | None,
    client_id: str,
    private_key: Path,
    kid: str | None,
    jku: str | None,
    token_url: str | None,
    scope: str | None,
    today: datetime | None,
    wait: bool,
) -> None:
    """Export a population from a FHIR server (Bulk Data, SMART Backend Services), then score it."""
    from urllib.parse import urlsplit

    from worker import population as jobs
    from worker.bulk_export import DEFAULT_SCOPE, BulkExportError, ExportSpec, load_signing_key
    from worker.export_tasks import SOURCE_LIMIT, export_kickoff

    for name, url in (("--fhir-base", fhir_base), ("--token-url", token_url), ("--jku", jku)):
        if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
            raise click.ClickException(f"{name} must be an absolute http(s) URL")
    try:
        load_signing_key(private_key, kid)  # a key that cannot sign fails here, not in a worker
    except BulkExportError as exc:
        raise click.ClickException(str(exc)) from None
    spec = ExportSpec(
        fhir=fhir_base.rstrip("/"),
        client_id=client_id,
        key_path=str(private_key.resolve()),
        group=group,
        kid=kid,
        jku=jku,
        token_url=token_url,
        scope=scope or DEFAULT_SCOPE,
    )
    if len(spec.to_json()) > SOURCE_LIMIT:
        raise click.ClickException("the export parameters are too long to store with the job")
    with _runtime(migrate=True) as runtime:
        settings, engine = runtime.settings, runtime.engine
        job_id = jobs.create_job(engine, runtime.model, spec.to_json(), (today.date() if today else date.today()))
        with engine.begin() as connection:
            jobs.set_status(connection, job_id, "exporting")
        click.echo(f"job {job_id} created: exporting from {spec.fhir}" + (f" (Group {group})" if group else ""))
        if not settings.redis_url:
            job = _follow(engine, job_id, runner=lambda: export_kickoff.delay(job_id))
        else:
            export_kickoff.delay(job_id)  # after the job row is committed
            if not wait:
                return
            job = _follow(engine, job_id)
        _report(settings, job)
    if job.get("status") == "failed":
        sys.exit(1)

