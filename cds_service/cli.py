"""The `spine-cds` command."""

from __future__ import annotations

import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from hooks.assessment import Contribution
from hooks.evaluation import evaluate_data, evaluate_profiles
from hooks.model import load_model


def _top(contributions: tuple[Contribution, ...], limit: int = 3) -> str:
    return ", ".join(c.signal.label for c in contributions[:limit]) or "-"


@click.group()
def main() -> None:
    """Spine-origin knee pain: a CDS Hooks service."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="gunicorn worker processes (default: twice the CPUs).")
@click.option("--threads", default=2, show_default=True, type=int, help="threads per worker (prefetch fetches wait on I/O).")
@click.option("--timeout", default=30, show_default=True, type=int, help="seconds before a stuck worker is restarted.")
@click.option(
    "--bind", default=None, help="gunicorn bind address instead of --host/--port, e.g. unix:/run/spine-cds.sock or fd://3."
)
def serve(host: str, port: int, workers: int | None, threads: int, timeout: int, bind: str | None) -> None:
    """Run the service under gunicorn."""
    from cds_service.app import audit_key, pseudonym_key
    from cds_service.db import make_engine, upgrade
    from cds_service.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    settings.instance_path.mkdir(parents=True, exist_ok=True)  # the default SQLite database lives there
    # once, before workers start: the schema and, on embedded defaults, the pseudonym key
    upgrade(make_engine(settings.effective_database_url))
    pseudonym_key(settings)
    audit_key(settings)
    count = workers or 2 * (os.cpu_count() or 1)
    if count > 1 and not settings.redis_url:
        click.echo("warning: without SPINE_CDS_REDIS_URL, replayed JWTs are detected per worker only", err=True)
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
    click.echo(f"{'profile':26} {'expected':11} {'outcome':11} {'score':>6}  top findings / alternatives")
    failures = 0
    for result in evaluate_profiles(model, day):
        a = result.assessment
        mark = "" if result.ok else "  <-- differs"
        failures += not result.ok
        click.echo(
            f"{result.profile:26} {result.expected:11} {result.outcome:11} {a.score:+6.2f}  "
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


def _audit_parts() -> tuple[Any, bytes, Any]:
    from cds_service.app import audit_key
    from cds_service.audit.chain import AnchorFile
    from cds_service.db import make_engine, upgrade
    from cds_service.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    return engine, audit_key(settings), AnchorFile(settings.effective_anchor_path)


def run_verification(engine: Any, key: bytes, anchors: Any) -> Any:
    """Verify the log and record the outcome for the auditors' integrity badge."""
    from sqlalchemy import insert

    from cds_service.audit.chain import verify
    from cds_service.models import Verification, utcnow

    report = verify(engine, key, anchors)
    with engine.begin() as connection:
        connection.execute(
            insert(Verification).values(
                created_at=utcnow(),
                ok=report.ok,
                entries=report.entries,
                head_seq=report.head_seq,
                problem=str(report.problem)[:2000] if report.problem else None,
            )
        )
    return report


@audit.command("verify")
def audit_verify() -> None:
    """Walk the chain, the rows and the anchors; exit 0 when intact, 1 naming the first broken entry."""
    engine, key, anchors = _audit_parts()
    report = run_verification(engine, key, anchors)
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

    from cds_service.audit.chain import purge
    from cds_service.settings import load_settings

    engine, key, anchors = _audit_parts()
    cutoff = before.replace(tzinfo=UTC) if before else datetime.now(UTC) - timedelta(days=load_settings().retention_days)
    count = purge(engine, key, anchors, cutoff)
    click.echo(f"purged {count} entries logged before {cutoff.isoformat()}")


if __name__ == "__main__":
    main()
