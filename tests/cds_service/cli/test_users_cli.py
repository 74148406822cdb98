"""`spine-cds users add`: an auditor account made on the command line logs in to the pages over HTTP."""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from cds_service.cli import main
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
