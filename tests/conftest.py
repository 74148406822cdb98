"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from hooks.model import Model, load_model
from tests.servers import ScratchPostgres, ScratchRedis

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"


POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def unavailable(reason: str) -> NoReturn:
    """A backing service is missing: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def redis_client_or_skip(url: str) -> redis.Redis:
    """A connected client on `url`, or `unavailable`."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"Redis not reachable at {url}: {exc}")
    return client


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit; `unavailable` without PostgreSQL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable on 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def model() -> Model:
    return load_model()


@pytest.fixture(scope="session")
def today() -> date:
    return date(2026, 11, 24)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public data beside the project; skipped outside CI when absent, an error in CI."""
    if not SHARED_DATA.is_dir():
        if IN_CI:
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ScratchRedis]:
    """A Redis server of the test's own on a free port, to kill; never the machine's."""
    server = ScratchRedis(tmp_path / "redis")
    server.directory.mkdir()
    try:
        server.start()
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable(f"cannot start a scratch Redis: {exc}")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_postgres() -> Iterator[ScratchPostgres]:
    """A PostgreSQL cluster of the test's own on a free port, to kill; never the machine's."""
    try:
        server = ScratchPostgres()
    except FileNotFoundError as exc:
        unavailable(f"cannot start a scratch PostgreSQL: {exc}")
    try:
        try:
            server.init()
            server.start()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            unavailable(f"cannot start a scratch PostgreSQL: {exc}")
        yield server
    finally:
        server.remove()
