"""The `spine-cds` command."""

from __future__ import annotations

import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import Engine

from cds_service.settings import Settings, SettingsError, load_settings
from hooks.assessment import Contribution
from hooks.evaluation import evaluate_data, evaluate_profiles
from hooks.model import load_model


def _top(contributions: tuple[Contribution, ...], limit: int = 3) -> str:
    return ", ".join([c.signal.key for c in contributions if c.points][:limit]) or "-"


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _store() -> tuple[Settings, Engine]:
    """The settings and a migrated database engine (the default SQLite file lives in the instance folder)."""
    from cds_service.db import make_engine, upgrade

    settings = _settings()
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    return settings, engine


@click.group()
def main() -> None:
    """Spine-origin knee pain: a CDS Hooks service."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="gunicorn worker processes (default: one per CPU).")
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=int,
    help="threads per worker: calls waiting on a FHIR server (at most FETCH_DEADLINE_SECONDS) hold one each.",
)
@click.option("--timeout", default=30, show_default=True, type=int, help="seconds before a stuck worker is restarted.")
@click.option(
    "--bind", default=None, help="gunicorn bind address instead of --host/--port, e.g. unix:/run/spine-cds.sock or fd://3."
)
def serve(host: str, port: int, workers: int | None, threads: int, timeout: int, bind: str | None) -> None:
    """Run the service under gunicorn."""
    from cds_service.keys import audit_key, pseudonym_key

    # once, before workers start: the schema and, on embedded defaults, the generated keys
    settings, engine = _store()
    engine.dispose()
    pseudonym_key(settings)
    audit_key(settings)
    # one process per CPU: a hook call is CPU-bound under the GIL, and the threads cover waits on I/O
    count = workers or max(2, os.cpu_count() or 1)
    os.environ["SPINE_CDS_AUTO_MIGRATE"] = "false"
    argv = [
        "gunicorn",
        "--bind", bind or f"{host}:{port}",
        "--workers", str(count),
        "--worker-class", "gthread",
        "--threads", str(threads),
        "--timeout", str(timeout),
        "--graceful-timeout", str(timeout),
        "--keep-alive", "5",
        "--no-control-socket",  # one per user and host otherwise, shared by every instance
        "--access-logfile", "-",
        # the access log format leaves out query strings and headers (no tokens, no patient ids)
        "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms',
        "cds_service.wsgi:app",
    ]  # fmt: skip
    os.execvp(sys.executable, [sys.executable, "-m", *argv])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port.")
@click.option("--instance", default="instance", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Exit after the demonstration instead of serving on.")
def demo(host: str, port: int, instance: Path, once: bool) -> None:
    """Start the service on embedded defaults and call it as an EHR would."""
    from cds_service.demo import run_demo

    run_demo(host, port, instance, once, click.echo)


@main.command()
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Assess as of this date.")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also assess every patient in FHIR Bundles and Bulk Data NDJSON under this directory.",
)
def evaluate(today: datetime | None, data_dir: Path | None) -> None:
    """Print the band and top findings for each synthetic profile (and real records with --data)."""
    day = today.date() if today else date.today()
    model = load_model()
    click.echo(f"Model {model.id} {model.version} {model.hash}, as of {day.isoformat()}\n")
    click.echo(f"{'profile':26} {'intended':11} {'outcome':11} {'score':>6}  {'card':34} counted findings / alternatives")
    failures = 0
    for result in evaluate_profiles(model, day):
        a = result.assessment
        mark = "" if result.ok else "  <-- differs"
        failures += not result.ok
        click.echo(
            f"{result.profile.name:26} {result.expected:11} {result.outcome:11} {a.score:+6.2f}  {result.card:34} "
            f"{_top(a.findings)} / {_top(a.alternatives)}{mark}"
        )
    if data_dir is not None:
        run = evaluate_data(model, data_dir, day)
        click.echo(f"\n{len(run.rows)} patients under {data_dir}:")
        for label, a in run.rows:
            click.echo(f"  {label:50} {a.score:+6.2f}  {a.band or a.ineligible_reason}")
        click.echo("Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(run.distribution().items())))
    if failures:
        click.echo(f"\n{failures} profile(s) differ from their intended outcome", err=True)
        sys.exit(1)


@main.group()
def audit() -> None:
    """Verify, anchor and purge the tamper-evident decision log."""


def _audit_parts() -> tuple[Engine, bytes, Any]:
    from cds_service.audit.chain import AnchorFile
    from cds_service.keys import audit_key

    settings, engine = _store()
    return engine, audit_key(settings), AnchorFile(settings.effective_anchor_path)


@audit.command("verify")
def audit_verify() -> None:
    """Walk the chain, the rows and the anchors; exit 0 when intact, 1 naming the first broken entry."""
    from cds_service.audit.chain import verify_and_record

    engine, key, anchors = _audit_parts()
    report = verify_and_record(engine, key, anchors)
    if report.ok:
        since = f" (after the retention checkpoint at entry {report.checkpoint_seq})" if report.checkpoint_seq else ""
        click.echo(
            f"intact: {report.entries} entries{since}, head at entry {report.head_seq}, {report.anchors} anchor records checked"
        )
        return
    click.echo(f"BROKEN: {report.problem}", err=True)
    sys.exit(1)


@audit.command("anchor")
def audit_anchor() -> None:
    """Record the chain head in the anchor file (outside the database)."""
    from cds_service.audit.chain import anchor

    engine, key, anchors = _audit_parts()
    record = anchor(engine, key, anchors)
    if record is None:
        click.echo("the head is already anchored")
    else:
        click.echo(f"anchored entry {record['seq']} at {record['at']} in {anchors.path}")


@audit.command("purge")
@click.option(
    "--before", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Default: now minus the retention period."
)
def audit_purge(before: datetime | None) -> None:
    """Delete entries older than the retention period, keeping a signed checkpoint so the rest verifies."""
    from datetime import UTC, timedelta

    from cds_service.audit.chain import PurgeRefused, purge

    engine, key, anchors = _audit_parts()
    cutoff = before.replace(tzinfo=UTC) if before else datetime.now(UTC) - timedelta(days=_settings().retention_days)
    try:
        count = purge(engine, key, anchors, cutoff)
    except PurgeRefused as refused:
        click.echo(f"{refused}; nothing was deleted", err=True)
        sys.exit(1)
    click.echo(f"purged {count} entries logged before {cutoff.isoformat()}")


@main.group()
def users() -> None:
    """Auditor accounts for the /audit pages and API."""


@users.command("add")
@click.argument("username")
@click.option("--role", default="auditor", show_default=True, help="The account's role (auditors read the decision log only).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of prompting.")
def users_add(username: str, role: str, password_stdin: bool) -> None:
    """Add an account USERNAME; the password is asked for twice (or read from stdin)."""
    from cds_service.audit.accounts import ROLES, AccountError, add_user

    if role not in ROLES:
        raise click.ClickException(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    _, engine = _store()
    try:
        add_user(engine, username, password, role)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"Added {role} {username.strip()!r}.")


@main.group()
def population() -> None:
    """Score whole populations from FHIR Bulk Data exports."""


def _population_parts() -> tuple[Settings, Engine]:
    from worker.celery_app import make_celery

    settings, engine = _store()
    celery = make_celery(settings)
    celery.set_current()
    celery.set_default()
    return settings, engine


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
    from hooks.model import load_model
    from worker import population as jobs
    from worker.tasks import split_job

    settings, engine = _population_parts()
    model = load_model(site=settings.site)
    job_id = jobs.create_job(engine, model, str(path.resolve()), (today.date() if today else date.today()))
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

    settings, engine = _population_parts()
    found = jobs.job(engine, job_id)
    if found is None:
        raise click.ClickException(f"no job {job_id}")
    _report(settings, found)


@population.command("resume")
@click.argument("job_id")
def population_resume(job_id: str) -> None:
    """Pick an interrupted job up where it stopped (chunks already scored are not scored again)."""
    from worker import population as jobs
    from worker.tasks import resume

    settings, engine = _population_parts()
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

    from hooks.model import load_model
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
    settings, engine = _population_parts()
    model = load_model(site=settings.site)
    job_id = jobs.create_job(engine, model, spec.to_json(), (today.date() if today else date.today()))
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


if __name__ == "__main__":
    main()
