"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest
import redis

from hooks.model import Model, load_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"


def redis_client_or_skip(url: str) -> redis.Redis:
    """A connected client; a failure in CI when Redis is down, a skip elsewhere."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if IN_CI:
            pytest.fail(f"Redis is required in CI ({url}): {exc}")
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    return client


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
