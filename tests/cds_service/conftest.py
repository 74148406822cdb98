"""The service under test runs over real HTTP, with a real database (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds_service.app import create_app
from tests.cds_service.audit_log import audit_log, audit_log_factory  # noqa: F401  (fixtures for the auditor and decision-log tests)
from tests.conftest import scratch_postgres
from tests.support import CHEAP_PASSWORD_HASH, FhirServer, LogReader, RunningService, SigningEhr, serve


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; fails in CI when PostgreSQL is down."""
    with scratch_postgres("spine_cds_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def ehr() -> SigningEhr:
    return SigningEhr()


@pytest.fixture
def service_factory(tmp_path: Path, ehr: SigningEhr) -> Iterator[Callable[..., RunningService]]:
    """Start the service over HTTP with the given settings (the EHR's inline JWKS trusted by default)."""
    stack: list[Any] = []

    def start(**settings: Any) -> RunningService:
        config: dict[str, Any] = {
            "instance_path": str(tmp_path / f"instance-{len(stack)}"),
            "trusted_issuers": {ehr.issuer: {"jwks": ehr.jwks}},
            "pseudonym_key": "test-pseudonym-key",
            "password_hash": CHEAP_PASSWORD_HASH,
            # the test peers (FHIR servers, key sets) speak plain http on loopback
            "allow_http": True,
        }
        config.update(settings)
        app = create_app(config)
        context = serve(app)
        base_url = context.__enter__()
        client = httpx.Client(base_url=base_url, timeout=10)
        stack.append((context, client, app))
        return RunningService(base_url, app, ehr, client)

    yield start
    for context, client, app in reversed(stack):
        client.close()
        context.__exit__(None, None, None)
        app.extensions["spine_cds"].engine.dispose()


@pytest.fixture
def service(service_factory: Callable[..., RunningService]) -> RunningService:
    """The service on SQLite, the embedded default."""
    return service_factory()


@pytest.fixture
def service_trusting(service_factory: Callable[..., RunningService], ehr: SigningEhr) -> Callable[..., RunningService]:
    """Start the service with these URL prefixes as the EHR issuer's `fhir_servers` (plus any other settings).

    The test FHIR servers listen on loopback, which the service refuses to an issuer without a list.
    """

    def start(*fhir_servers: str, **settings: Any) -> RunningService:
        issuer = {"jwks": ehr.jwks, "fhir_servers": list(fhir_servers)}
        return service_factory(trusted_issuers={ehr.issuer: issuer}, **settings)

    return start


@pytest.fixture
def fhir_server_factory() -> Iterator[Callable[..., FhirServer]]:
    """Start in-memory FHIR servers (FhirServer(resources, **options)) for the test; stopped afterwards."""
    with ExitStack() as stack:

        def start(resources: list[dict[str, Any]], **options: Any) -> FhirServer:
            server = FhirServer(resources, **options)
            stack.enter_context(server.peer.running())
            return server

        yield start


@pytest.fixture
def read_log() -> Iterator[Callable[[RunningService], LogReader]]:
    """Open a reader on a running service's decision log (its own connection, committed rows only)."""
    readers: list[LogReader] = []

    def open_reader(running: RunningService) -> LogReader:
        reader = LogReader.of(running)
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        reader.close()


@pytest.fixture(scope="module")
def module_service(tmp_path_factory: pytest.TempPathFactory, ehr: SigningEhr) -> Iterator[RunningService]:
    """One service on SQLite shared by a test module, for tests whose calls cannot affect each other."""
    config: dict[str, Any] = {
        "instance_path": str(tmp_path_factory.mktemp("module-instance")),
        "trusted_issuers": {ehr.issuer: {"jwks": ehr.jwks}},
        "pseudonym_key": "test-pseudonym-key",
        "password_hash": CHEAP_PASSWORD_HASH,
        "allow_http": True,
    }
    app = create_app(config)
    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        yield RunningService(base_url, app, ehr, client)
    app.extensions["spine_cds"].engine.dispose()
