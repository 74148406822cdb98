"""The `spine-cds` command: the demo end to end, and `serve` as a real gunicorn process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner

from cds_service.cli import main


def test_demo_once_calls_every_profile_prints_cards_and_sends_feedback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--once", "--port", "0", "--instance", str(tmp_path / "instance")])
    assert result.exit_code == 0, result.output
    assert "Discovery lists 3 services" in result.output
    assert "radiculopathy-knee-pain" in result.output and "[WARNING]" in result.output
    assert "bunion-back-weakness" in result.output and "[INFO]" in result.output
    assert "order-sign with a knee MRI drafted: 1 card(s)" in result.output
    assert "Feedback sent (one accepted, one overridden): HTTP 200" in result.output
    assert (tmp_path / "instance" / "spine-cds.sqlite3").exists()


def test_serve_runs_gunicorn_with_migrations_and_a_shared_pseudonym_key(tmp_path: Path) -> None:
    # the test owns the listening socket and hands it to gunicorn, so requests queue until it serves
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    instance = tmp_path / "instance"
    env = {**os.environ, "SPINE_CDS_INSTANCE_PATH": str(instance)}
    env.pop("SPINE_CDS_PSEUDONYM_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "serve", "--bind", f"fd://{listener.fileno()}", "--workers", "2"],
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener.close()
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=60)
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}
        assert (instance / "pseudonym.key").read_text().strip()
        assert httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=10).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
