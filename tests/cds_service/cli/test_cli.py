"""The `spine-cds` command: the demo end to end, `serve` as a real gunicorn process, and which commands migrate."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from click.testing import CliRunner
from sqlalchemy import inspect, select

from cds_service.cds_hooks.tables import SeenToken
from cds_service.cli import main
from cds_service.database import make_engine
from tests.support import SigningEhr


def test_demo_once_calls_every_profile_prints_cards_and_sends_feedback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--once", "--port", "0", "--instance", str(tmp_path / "instance")])
    assert result.exit_code == 0, result.output
    assert "Discovery lists 3 services" in result.output
    assert "radiculopathy-knee-pain" in result.output and "[WARNING]" in result.output
    assert "double-coded-episode" in result.output and "[INFO]" in result.output
    assert "order-sign with a knee MRI drafted: 1 card(s)" in result.output
    assert "Feedback sent (one accepted, one overridden): HTTP 200" in result.output
    assert (tmp_path / "instance" / "spine-cds.sqlite3").exists()


@contextmanager
def serving(env: dict[str, str], *options: str, log: Path | None = None) -> Iterator[str]:
    """`spine-cds serve` on a listening socket the test owns (requests queue until gunicorn serves); yields its URL.
    With `log`, gunicorn's output (its error log, where the service's own lines go) is written there."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    output = log.open("wb") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "serve", "--bind", f"fd://{listener.fileno()}", *options],
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=output,
        stderr=output,
    )
    listener.close()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        if log is not None:
            output.close()  # type: ignore[union-attr]


def test_serve_runs_gunicorn_with_migrations_and_a_shared_pseudonym_key(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    env = {**os.environ, "SPINE_CDS_INSTANCE_PATH": str(instance)}
    env.pop("SPINE_CDS_PSEUDONYM_KEY", None)
    with serving(env, "--workers", "2") as base:
        ready = httpx.get(f"{base}/readyz", timeout=60)
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}
        assert (instance / "pseudonym.key").read_text().strip()
        assert httpx.get(f"{base}/cds-services", timeout=10).status_code == 401


def test_a_jwt_replayed_to_another_serve_process_on_the_same_instance_is_refused(tmp_path: Path) -> None:
    """req 192 on embedded defaults (SQLite in the instance folder, no Redis): the jti memory is the
    database every process opens, so a JWT accepted by one `spine-cds serve` is refused by another."""
    ehr = SigningEhr()
    public = "https://cds.example.org"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPINE_CDS_")},
        "SPINE_CDS_INSTANCE_PATH": str(tmp_path / "instance"),
        "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ehr.issuer: {"jwks": ehr.jwks}}),
        # both answer for one public URL, as two hosts behind a load balancer would
        "SPINE_CDS_PUBLIC_BASE_URL": public,
    }
    token = {"Authorization": f"Bearer {ehr.token(public + '/cds-services')}"}
    second_log = tmp_path / "second.log"
    with serving(env, "--workers", "1") as first:
        # the first is serving (and has migrated the database) before the second starts
        assert httpx.get(f"{first}/readyz", timeout=60).status_code == 200
        with serving(env, "--workers", "1", log=second_log) as second:
            assert httpx.get(f"{second}/readyz", timeout=60).status_code == 200
            accepted = httpx.get(f"{first}/cds-services", headers=token, timeout=10)
            assert accepted.status_code == 200, accepted.text
            assert [s["id"] for s in accepted.json()["services"]]
            replayed = httpx.get(f"{second}/cds-services", headers=token, timeout=10)
            assert replayed.status_code == 401
            assert replayed.content == b""
    # the refusal explains itself in gunicorn's log, with its reason code and never the token
    lines = second_log.read_text(encoding="utf-8", errors="replace")
    assert "refused GET /cds-services: replay; replay: jti already used" in lines
    assert token["Authorization"].split()[1] not in lines
    # the one remembered jti is in the SQLite file of the instance folder, as a digest
    database = make_engine(f"sqlite:///{tmp_path / 'instance' / 'spine-cds.sqlite3'}")
    try:
        with database.connect() as connection:
            assert [len(key) for key in connection.execute(select(SeenToken.key)).scalars()] == [64]
    finally:
        database.dispose()


def test_read_only_commands_do_not_migrate_and_migrate_does(tmp_path: Path) -> None:
    env = {"SPINE_CDS_INSTANCE_PATH": str(tmp_path / "instance"), "SPINE_CDS_DATABASE_URL": None, "SPINE_CDS_REDIS_URL": None}
    database = make_engine(f"sqlite:///{tmp_path / 'instance' / 'spine-cds.sqlite3'}")
    try:
        status = CliRunner().invoke(main, ["population", "status", "no-such-job"], env=env)
        assert status.exit_code == 1
        assert "run `spine-cds migrate` first" in status.output
        assert inspect(database).get_table_names() == []  # nothing was created
        migrated = CliRunner().invoke(main, ["migrate"], env=env)
        assert migrated.exit_code == 0, migrated.output
        assert {"decisions", "log_chain", "population_jobs"} <= set(inspect(database).get_table_names())
        status = CliRunner().invoke(main, ["population", "status", "no-such-job"], env=env)
        assert status.exit_code == 1 and "no job no-such-job" in status.output
    finally:
        database.dispose()
