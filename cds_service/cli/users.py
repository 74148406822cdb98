"""`spine-cds users`: auditor accounts."""

from __future__ import annotations

import sys

import click

from cds_service.cli.common import open_runtime


@click.group()
def users() -> None:
    """Auditor accounts for the /audit pages and API."""


@users.command("add")
@click.argument("username")
@click.option("--role", default="auditor", show_default=True, help="The account's role (auditors read the decision log only).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of prompting.")
def users_add(username: str, role: str, password_stdin: bool) -> None:
    """Add an account USERNAME; the password is asked for twice (or read from stdin)."""
    from cds_service.auditor.accounts import ROLES, AccountError, add_user

    if role not in ROLES:
        raise click.ClickException(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with open_runtime(migrate=True) as runtime:
        try:
            add_user(runtime.engine, username, password, role, method=runtime.settings.password_hash)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"Added {role} {username.strip()!r}.")

