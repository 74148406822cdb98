"""`spine-cds audit`: verify, anchor and purge the decision log."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from cds_service.cli.common import open_runtime


@click.group()
def audit() -> None:
    """Verify, anchor and purge the tamper-evident decision log."""


@audit.command("verify")
def audit_verify() -> None:
    """Walk the chain, the rows and the anchors; exit 0 when intact, 1 naming the first broken entry."""
    from cds_service.decision_log.chain import verify_and_record

    with open_runtime(migrate=True) as runtime:  # the verification is recorded in the database
        report = verify_and_record(runtime.engine, runtime.audit_key, runtime.anchors)
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
    from cds_service.decision_log.chain import anchor

    with open_runtime(migrate=True) as runtime:
        record = anchor(runtime.engine, runtime.audit_key, runtime.anchors)
    if record is None:
        click.echo("the head is already anchored")
    else:
        click.echo(f"anchored entry {record['seq']} at {record['at']} in {runtime.anchors.path}")


@audit.command("purge")
@click.option(
    "--before", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Default: now minus the retention period."
)
def audit_purge(before: datetime | None) -> None:
    """Delete entries older than the retention period, keeping a signed checkpoint so the rest verifies."""
    from datetime import UTC, timedelta

    from cds_service.decision_log.chain import PurgeRefused, purge

    with open_runtime(migrate=True) as runtime:
        days = runtime.settings.retention_days
        cutoff = before.replace(tzinfo=UTC) if before else datetime.now(UTC) - timedelta(days=days)
        try:
            count = purge(runtime.engine, runtime.audit_key, runtime.anchors, cutoff)
        except PurgeRefused as refused:
            click.echo(f"{refused}; nothing was deleted", err=True)
            sys.exit(1)
    click.echo(f"purged {count} entries logged before {cutoff.isoformat()}")

