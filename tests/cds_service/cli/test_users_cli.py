"""`spine-cds users`: accounts made and changed on the command line, as the pages over HTTP see them, each change in the access log."""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result
from sqlalchemy import select

from cds_service.cli import main
from cds_service.database import make_engine
from cds_service.decision_log.tables import AccessRecord
from tests.support import CHEAP_PASSWORD_HASH, RunningService

PASSWORD = "a long enough passphrase"


def add(instance: Path, *args: str, password: str | None = PASSWORD, stdin: str | None = None) -> Result:
    env = {"SPINE_CDS_INSTANCE_PATH": str(instance), "SPINE_CDS_DATABASE_URL": None, "SPINE_CDS_PASSWORD_HASH": CHEAP_PASSWORD_HASH}
    options = ["--password-stdin"] if password is not None else []
    text = stdin if stdin is not None else (f"{password}\n" if password is not None else None)
    return CliRunner().invoke(main, ["users", "add", *args, *options], input=text, env=env)


def log_in(client: httpx.Client, username: str, password: str) -> httpx.Response:
    form = client.get("/audit/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    return client.post("/audit/login", data={"csrf_token": unescape(token.group(1)), "username": username, "password": password})


def test_users_add_reads_the_password_from_stdin_and_the_account_logs_in(
    tmp_path: Path, service_factory: Callable[..., RunningService]
) -> None:
    instance = tmp_path / "instance"

    result = add(instance, "alice", "--role", "auditor")

    assert result.exit_code == 0, result.output
    assert "alice" in result.output and PASSWORD not in result.output
    assert (instance / "spine-cds.sqlite3").exists()
    running = service_factory(instance_path=str(instance))
    with httpx.Client(base_url=running.base_url, timeout=10) as client:
        assert log_in(client, "alice", "not the password").status_code == 401
        response = log_in(client, "alice", PASSWORD)
        assert response.status_code == 302 and response.headers["location"] == "/audit/"
        dashboard = client.get("/audit/", follow_redirects=False)
        assert dashboard.status_code == 200 and "alice" in dashboard.text


def test_users_add_prompts_twice_when_no_stdin_flag(tmp_path: Path, service_factory: Callable[..., RunningService]) -> None:
    instance = tmp_path / "instance"
    mismatch = add(instance, "bob", password=None, stdin=f"{PASSWORD}\nsomething else\n{PASSWORD}\n{PASSWORD}\n")
    assert mismatch.exit_code == 0, mismatch.output
    assert mismatch.output.count("Password") >= 2 and "Repeat for confirmation" in mismatch.output
    assert "do not match" in mismatch.output.lower()
    assert PASSWORD not in mismatch.output  # hidden input is not echoed
    running = service_factory(instance_path=str(instance))
    with httpx.Client(base_url=running.base_url, timeout=10) as client:
        assert log_in(client, "bob", PASSWORD).status_code == 302


def test_a_duplicate_user_is_an_error(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    assert add(instance, "carol").exit_code == 0
    again = add(instance, "carol", password="another long passphrase")
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_a_short_password_is_an_error(tmp_path: Path) -> None:
    result = add(tmp_path / "instance", "dave", password="too short")
    assert result.exit_code == 1
    assert "at least 12 characters" in result.output


def test_an_unknown_role_is_an_error_before_the_password_is_asked(tmp_path: Path) -> None:
    result = add(tmp_path / "instance", "erin", "--role", "admin", password=None, stdin="")
    assert result.exit_code == 1
    assert "unknown role 'admin'" in result.output and "auditor" in result.output
    assert "Password" not in result.output


def users(instance: Path, *args: str, stdin: str | None = None, database_url: str | None = None) -> Result:
    env = {"SPINE_CDS_INSTANCE_PATH": str(instance), "SPINE_CDS_DATABASE_URL": database_url, "SPINE_CDS_PASSWORD_HASH": CHEAP_PASSWORD_HASH}
    return CliRunner().invoke(main, ["users", *args], input=stdin, env=env)


def access_log(instance: Path) -> list[tuple[str, str, dict[str, Any]]]:
    engine = make_engine(f"sqlite:///{instance / 'spine-cds.sqlite3'}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(AccessRecord.username, AccessRecord.action, AccessRecord.details).order_by(AccessRecord.id))
            return [(r.username, r.action, r.details) for r in rows]
    finally:
        engine.dispose()


def test_users_list_disable_enable_set_password_and_remove_each_leave_an_access_log_entry(
    tmp_path: Path, service_factory: Callable[..., RunningService]
) -> None:
    instance = tmp_path / "instance"
    assert add(instance, "frank").exit_code == 0
    assert add(instance, "grace").exit_code == 0
    listed = users(instance, "list")
    assert listed.exit_code == 0, listed.output
    assert re.search(r"frank\s+auditor\s+active", listed.output) and re.search(r"grace\s+auditor\s+active", listed.output)
    assert "pbkdf2" not in listed.output and "scrypt" not in listed.output  # never the hash

    running = service_factory(instance_path=str(instance))
    with httpx.Client(base_url=running.base_url, timeout=10) as client:
        assert users(instance, "disable", "frank").exit_code == 0
        assert re.search(r"frank\s+auditor\s+disabled", users(instance, "list").output)
        assert log_in(client, "frank", PASSWORD).status_code == 401
        assert users(instance, "enable", "frank").exit_code == 0
        assert log_in(client, "frank", PASSWORD).status_code == 302
    with httpx.Client(base_url=running.base_url, timeout=10) as client:
        changed = users(instance, "set-password", "frank", "--password-stdin", stdin="a different passphrase\n")
        assert changed.exit_code == 0, changed.output
        assert log_in(client, "frank", PASSWORD).status_code == 401
        assert log_in(client, "frank", "a different passphrase").status_code == 302
    assert users(instance, "remove", "grace", "--yes").exit_code == 0
    assert "grace" not in users(instance, "list").output

    changes = [(action, details) for actor, action, details in access_log(instance) if action.startswith("users.")]
    assert changes == [
        ("users.add", {"user": "frank", "role": "auditor"}),
        ("users.add", {"user": "grace", "role": "auditor"}),
        ("users.disable", {"user": "frank"}),
        ("users.enable", {"user": "frank"}),
        ("users.set-password", {"user": "frank"}),
        ("users.remove", {"user": "grace"}),
    ]
    assert all(actor.startswith("cli") for actor, action, _ in access_log(instance) if action.startswith("users."))
    assert "a different passphrase" not in str(access_log(instance))
    verified = CliRunner().invoke(main, ["audit", "verify"], env={"SPINE_CDS_INSTANCE_PATH": str(instance), "SPINE_CDS_DATABASE_URL": None})
    assert verified.exit_code == 0 and verified.output.startswith("intact"), verified.output


def test_changing_an_unknown_user_is_an_error_and_logs_nothing(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    assert add(instance, "heidi").exit_code == 0
    for args in (("disable", "nobody"), ("enable", "nobody"), ("remove", "nobody", "--yes")):
        result = users(instance, *args)
        assert result.exit_code == 1 and "no user 'nobody'" in result.output
    short = users(instance, "set-password", "heidi", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    assert [action for _, action, _ in access_log(instance)] == ["users.add"]


def test_account_changes_on_postgresql_are_logged_and_chained(tmp_path: Path, postgres_url: str) -> None:
    """The same commands against PostgreSQL (shared by the session: names unique to this test)."""
    name = f"pg-auditor-{tmp_path.name[-12:]}"
    instance = tmp_path / "instance"
    assert users(instance, "add", name, "--password-stdin", stdin=f"{PASSWORD}\n", database_url=postgres_url).exit_code == 0
    assert re.search(rf"{re.escape(name)}\s+auditor\s+active", users(instance, "list", database_url=postgres_url).output)
    assert users(instance, "disable", name, database_url=postgres_url).exit_code == 0
    assert re.search(rf"{re.escape(name)}\s+auditor\s+disabled", users(instance, "list", database_url=postgres_url).output)
    assert users(instance, "remove", name, "--yes", database_url=postgres_url).exit_code == 0
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(AccessRecord.action, AccessRecord.details).order_by(AccessRecord.id)).all()
    finally:
        engine.dispose()
    assert [r.action for r in rows if r.details.get("user") == name] == ["users.add", "users.disable", "users.remove"]
