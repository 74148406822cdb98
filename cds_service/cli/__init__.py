"""The `spine-cds` command: one module per command group, assembled here."""

from __future__ import annotations

import click

from cds_service.cli import audit, evaluate, population, service, users


@click.group()
def main() -> None:
    """Spine-origin knee pain: a CDS Hooks service."""


main.add_command(service.serve)
main.add_command(service.demo)
main.add_command(service.migrate)
main.add_command(evaluate.evaluate)
main.add_command(audit.audit)
main.add_command(users.users)
main.add_command(population.population)
