"""The `spine-cds` command."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from hooks.evaluation import evaluate_data, evaluate_profiles
from hooks.model import load_model


def _top(assessment_contributions: tuple[object, ...], limit: int = 3) -> str:
    labels = [getattr(c, "signal").label for c in assessment_contributions[:limit]]  # noqa: B009
    return ", ".join(labels) or "-"


@click.group()
def main() -> None:
    """Spine-origin knee pain: a CDS Hooks service."""


@main.command()
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Assess as of this date.")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also assess every patient in FHIR Bundles and Bulk Data NDJSON under this directory.",
)
def evaluate(today: object, data_dir: Path | None) -> None:
    """Print the band and top findings for each synthetic profile (and real records with --data)."""
    day = today.date() if hasattr(today, "date") else date.today()
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


if __name__ == "__main__":
    main()
