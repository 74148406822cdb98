"""`spine-cds users`: auditor accounts. Every change is an entry of the access log, chained like the rest."""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING, Any

import click

from cds_service.cli.common import open_runtime

if TYPE_CHECKING:
    from cds_service.runtime import Runtime


@click.group()
def users() -> None:
    """Auditor accounts for the /audit pages and API."""


def _actor() -> str:
    """Who made a change on the command line, as the access log names them."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container without a passwd entry)
        return "cli"


def _record(runtime: Runtime, action: str, **details: Any) -> None:
    runtime.decision_log.record_access(_actor(), action, details)


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.read().rstrip("\r\n")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@users.command("add")
@click.argument("username")
@click.option("--role", default="auditor", show_default=True, help="The account's role (auditors read the decision log only).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of prompting.")
def users_add(username: str, role: str, password_stdin: bool) -> None:
    """Add an account USERNAME; the password is asked for twice (or read from stdin)."""
    from cds_service.auditor.accounts import ROLES, AccountError, add_user

    if role not in ROLES:
        raise click.ClickException(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    password = _password(password_stdin)
    with open_runtime(migrate=True) as runtime:
        try:
            add_user(runtime.engine, username, password, role, method=runtime.settings.password_hash)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        _record(runtime, "users.add", user=username.strip(), role=role)
    click.echo(f"Added {role} {username.strip()!r}.")


@users.command("list")
def users_list() -> None:
    """List the accounts: name, role, whether it may sign in, when it was added."""
    from cds_service.auditor.accounts import list_users

    with open_runtime(migrate=False) as runtime:
        accounts = list_users(runtime.engine)
    if not accounts:
        click.echo("no accounts")
        return
    click.echo(f"{'username':30} {'role':10} {'status':9} added")
    for account in accounts:
        status = "active" if account["active"] else "disabled"
        click.echo(f"{account['username']:30} {account['role']:10} {status:9} {account['created_at']:%Y-%m-%d %H:%M}")


def _change(action: str, username: str, done: str, change: Any) -> None:
    from cds_service.auditor.accounts import AccountError

    with open_runtime(migrate=True) as runtime:
        try:
            change(runtime)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        _record(runtime, action, user=username)
    click.echo(f"{done} {username!r}.")


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Stop USERNAME signing in; its open sessions end at their next request."""
    from cds_service.auditor.accounts import set_active

    _change("users.disable", username, "Disabled", lambda runtime: set_active(runtime.engine, username, False))


@users.command("enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Let a disabled USERNAME sign in again."""
    from cds_service.auditor.accounts import set_active

    _change("users.enable", username, "Enabled", lambda runtime: set_active(runtime.engine, username, True))


@users.command("remove")
@click.argument("username")
@click.confirmation_option(prompt="Remove the account? What it did stays in the access log.")
def users_remove(username: str) -> None:
    """Delete USERNAME; the access log keeps what it did under its name."""
    from cds_service.auditor.accounts import remove_user

    _change("users.remove", username, "Removed", lambda runtime: remove_user(runtime.engine, username))


@users.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of prompting.")
def users_set_password(username: str, password_stdin: bool) -> None:
    """Give USERNAME a new password (asked for twice, or read from stdin)."""
    from cds_service.auditor.accounts import set_password

    password = _password(password_stdin)

    def change(runtime: Runtime) -> None:
        set_password(runtime.engine, username, password, method=runtime.settings.password_hash)

    _change("users.set-password", username, "Changed the password of", change)
