"""`spine-cds evaluate`: the model against its synthetic profiles, and optionally real records."""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path

import click

from hooks.assessment import Contribution
from hooks.evaluation import evaluate_data, evaluate_profiles
from hooks.model import load_model


def _top(contributions: tuple[Contribution, ...], limit: int = 3) -> str:
    return ", ".join([c.signal.key for c in contributions if c.points][:limit]) or "-"



@click.command()
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

