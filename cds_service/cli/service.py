"""`spine-cds serve`, `demo` and `migrate`: running the service."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from cds_service.cli.common import open_runtime


@click.command()
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
    # once, before workers start: the schema and, on embedded defaults, the generated keys
    with open_runtime(migrate=True) as runtime:
        runtime.pseudonym_key, runtime.audit_key  # noqa: B018  (read, so generated now if missing)
        settings = runtime.settings
    # one process per CPU: a hook call is CPU-bound under the GIL, and the threads cover waits on I/O
    count = workers or max(2, os.cpu_count() or 1)
    os.environ["SPINE_CDS_AUTO_MIGRATE"] = "false"
    if settings.metrics_enabled:
        # every worker's counts in one folder, emptied at each start (prometheus_client's multiprocess mode)
        folder = settings.instance_path / "prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port.")
@click.option("--instance", default="instance", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Exit after the demonstration instead of serving on.")
def demo(host: str, port: int, instance: Path, once: bool) -> None:
    """Start the service on embedded defaults and call it as an EHR would."""
    from cds_service.demo import run_demo

    run_demo(host, port, instance, once, click.echo)



@click.command()
def migrate() -> None:
    """Bring the database schema to the newest revision (serve and the commands that write do it too)."""
    with open_runtime(migrate=True):
        pass
    click.echo("the database schema is at the newest revision")
