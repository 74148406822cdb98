"""Population scoring from a FHIR server: SMART Backend Services tokens, Bulk Data kick-off, polling and
download against a real HTTP server, then the whole `spine-cds population export` command in eager mode."""

from __future__ import annotations

import csv
import gzip
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm
from sqlalchemy import func, select

from cds_service.cli import main
from cds_service.database import make_engine, upgrade
from cds_service.population.tables import PopulationAssessment, PopulationJob
from cds_service.settings import load_settings
from hooks import synthetic
from hooks.model import load_model
from tests.support import http_server
from worker import bulk_export, population
from worker.bulk_export import (
    ASSERTION_TYPE,
    DEFAULT_SCOPE,
    EXPORT_TYPES,
    BulkClient,
    BulkExportError,
    ClientCredentials,
    ExportSpec,
    Manifest,
    Pending,
    TokenCache,
    TokenError,
    backoff,
    load_signing_key,
    next_wait,
    retry_after,
)
from worker.celery_app import make_celery

TODAY = date(2026, 11, 24)
CLIENT_ID = "spine-cds-population"
KID = "population-key-1"
# (profile, patients): the first two profiles belong on the worklist, the rest do not
ON_WORKLIST = {"radiculopathy-knee-pain": 2, "double-coded-episode": 1}
OFF_WORKLIST = {"acl-tear-only": 1, "knee-oa-only": 1, "child": 1, "already-referred": 1, "recent-lumbar-mri": 1}


# -- a Bulk Data server with a SMART Backend Services token endpoint ---------------------------------


def outcome(diagnostics: str, code: str = "processing") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class BulkServer:
    """Verifies client assertions, issues bearer tokens, and runs one scripted export per kick-off."""

    files: dict[str, tuple[str, bytes]]  # file name -> (resource type, NDJSON)
    errors: bytes = b""
    gzip_files: set[str] = field(default_factory=set)  # served with Content-Encoding: gzip
    groups: set[str] = field(default_factory=lambda: {"knee-clinic"})
    # what the status URL answers before the manifest: 202 (in progress) or an error status
    script: list[int] = field(default_factory=lambda: [202, 202])
    retry_after: str | None = "0"
    token_lifetime: int = 300
    kickoff_error: tuple[int, dict[str, Any]] | None = None
    clients: dict[str, tuple[str, Any]] = field(default_factory=dict)  # client id -> (kid, public key)
    tokens: set[str] = field(default_factory=set)
    used_jti: set[str] = field(default_factory=set)
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (header, claims)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    kickoffs: list[Seen] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return self.url + "/fhir"

    @property
    def token_url(self) -> str:
        return self.url + "/auth/token"

    def register(self, client_id: str, kid: str, public_key: Any) -> None:
        self.clients[client_id] = (kid, public_key)

    def file_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/files/")]

    @property
    def polls(self) -> int:
        return sum(1 for s in self.seen if s.path.startswith("/status/") and s.method == "GET")

    # -- HTTP ------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self.seen.append(Seen(method, path, query, headers))
        if method == "GET" and path == "/fhir/.well-known/smart-configuration":
            return Answer.json(
                200,
                {
                    "token_endpoint": self.token_url,
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                    "capabilities": ["client-confidential-asymmetric"],
                },
            )
        if method == "POST" and path == "/auth/token":
            return self.issue_token({k: v[0] for k, v in parse_qs(body.decode()).items()})
        if not self.authorized(headers):
            return Answer.json(401, outcome("a valid bearer token is required", "login"))
        if method == "GET" and (path == "/fhir/$export" or (path.startswith("/fhir/Group/") and path.endswith("/$export"))):
            return self.kickoff(method, path, query, headers)
        if path.startswith("/status/"):
            return self.status(method, path)
        if method == "GET" and path.startswith("/files/"):
            return self.file(path.removeprefix("/files/"), headers)
        return Answer.json(404, outcome(f"no {path}", "not-found"))

    def issue_token(self, form: dict[str, str]) -> Answer:
        self.token_forms.append(form)
        if form.get("grant_type") != "client_credentials":
            return Answer.json(400, {"error": "unsupported_grant_type"})
        if form.get("client_assertion_type") != ASSERTION_TYPE or "client_assertion" not in form:
            return Answer.json(
                400, {"error": "invalid_request", "error_description": "a jwt-bearer client assertion is required"}
            )
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            issuer = str(jwt.decode(assertion, options={"verify_signature": False}).get("iss"))
            kid, public_key = self.clients[issuer]
            if header.get("kid") != kid:
                raise jwt.InvalidTokenError(f"unknown kid {header.get('kid')!r}")
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS384", "ES384"],
                audience=self.token_url,
                issuer=issuer,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except (jwt.InvalidTokenError, KeyError) as exc:
            return Answer.json(401, {"error": "invalid_client", "error_description": f"assertion rejected: {exc}"})
        if claims["sub"] != claims["iss"] or claims["exp"] > time.time() + 300 + 5:
            return Answer.json(
                401, {"error": "invalid_client", "error_description": "sub must equal iss; exp at most 5 minutes ahead"}
            )
        with self.lock:
            if claims["jti"] in self.used_jti:
                return Answer.json(401, {"error": "invalid_client", "error_description": "jti already used"})
            self.used_jti.add(claims["jti"])
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            self.assertions.append((header, claims))
        return Answer.json(
            200,
            {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime, "scope": form.get("scope", "")},
        )

    def authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in self.tokens

    def kickoff(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Answer:
        if headers.get("prefer") != "respond-async" or headers.get("accept") != "application/fhir+json":
            return Answer.json(400, outcome("Prefer: respond-async and Accept: application/fhir+json are required", "invalid"))
        if self.kickoff_error:
            return Answer.json(*self.kickoff_error)
        if path.startswith("/fhir/Group/") and path.split("/")[3] not in self.groups:
            return Answer.json(404, outcome(f"no Group {path.split('/')[3]}", "not-found"))
        self.kickoffs.append(Seen(method, path, query, headers))
        return Answer.json(202, outcome("accepted", "informational"), {"Content-Location": f"{self.url}/status/{uuid.uuid4()}"})

    def status(self, method: str, path: str) -> Answer:
        if method == "DELETE":
            self.deleted.append(path)
            return Answer.json(202, outcome("deleted", "informational"))
        with self.lock:
            step = self.script.pop(0) if self.script else 200
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        if step == 202:
            return Answer(202, b"", {**headers, "X-Progress": "exporting"})
        if step != 200:
            return Answer.json(step, outcome("busy, try again", "transient"), headers)
        manifest = {
            "transactionTime": "2026-11-24T10:00:00Z",
            "request": f"{self.base}/$export?_type={','.join(EXPORT_TYPES)}",
            "requiresAccessToken": True,
            "output": [
                {"type": kind, "url": f"{self.url}/files/{name}", "count": content.count(b"\n")}
                for name, (kind, content) in self.files.items()
            ],
            "error": [{"type": "OperationOutcome", "url": f"{self.url}/files/errors"}] if self.errors else [],
        }
        return Answer.json(200, manifest)

    def file(self, name: str, headers: dict[str, str]) -> Answer:
        content = self.errors if name == "errors" else self.files[name][1] if name in self.files else None
        if content is None:
            return Answer.json(404, outcome(f"no file {name}", "not-found"))
        if name in self.gzip_files and "gzip" in headers.get("accept-encoding", ""):
            return Answer(200, gzip.compress(content), {"Content-Type": "application/fhir+ndjson", "Content-Encoding": "gzip"})
        return Answer(200, content, {"Content-Type": "application/fhir+ndjson"})

    @classmethod
    @contextmanager
    def running(cls, *args: Any, **kwargs: Any) -> Iterator[BulkServer]:
        server = cls(*args, **kwargs)

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = server.handle(self.command, parts.path, parse_qs(parts.query), headers, body)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        with http_server(Handler) as server.url:
            yield server


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
        return cls(status, json.dumps(body).encode(), {"Content-Type": "application/fhir+json", **(headers or {})})


# -- the population and the client's keys ---------------------------------------------------------


@dataclass(frozen=True)
class Population:
    files: dict[str, tuple[str, bytes]]
    patients: set[str]
    worklist: set[str]


def ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in resources)


@pytest.fixture(scope="module")
def people() -> Population:
    by_type: dict[str, list[dict[str, Any]]] = {}
    patients, worklist = set(), set()
    for profile, count in {**ON_WORKLIST, **OFF_WORKLIST}.items():
        for n in range(count):
            patient_id = f"{profile}-{n}"
            patients.add(patient_id)
            if profile in ON_WORKLIST:
                worklist.add(patient_id)
            for resource in synthetic.generate(profile, seed=n, today=TODAY, patient_id=patient_id):
                by_type.setdefault(resource["resourceType"], []).append(resource)
    conditions = by_type.pop("Condition")
    half = len(conditions) // 2  # one patient's conditions end up in both files
    files = {"patients": ("Patient", ndjson(by_type.pop("Patient"))), "conditions-1": ("Condition", ndjson(conditions[:half]))}
    files["conditions-2"] = ("Condition", ndjson(conditions[half:]))
    files.update({kind.lower(): (kind, ndjson(items)) for kind, items in sorted(by_type.items())})
    return Population(files, patients, worklist)


@dataclass(frozen=True)
class Keys:
    rsa_pem: Path
    rsa_public: Any
    other_pem: Path
    ec_jwk: Path
    ec_public: Any


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    pem = serialization.PrivateFormat.PKCS8
    for name, key in (("client.pem", rsa_key), ("other.pem", other)):
        (folder / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()))
    jwk = ECAlgorithm.to_jwk(ec_key, as_dict=True)
    jwk.update(kid="ec-key", alg="ES384")
    (folder / "client.jwk.json").write_text(json.dumps(jwk))
    return Keys(
        folder / "client.pem", rsa_key.public_key(), folder / "other.pem", folder / "client.jwk.json", ec_key.public_key()
    )


@pytest.fixture
def server(people: Population, keys: Keys) -> Iterator[BulkServer]:
    bulk_export.TOKENS.clear()  # the workers' process-wide token cache
    with BulkServer.running(people.files, errors=ndjson([outcome("Observation/9 could not be exported")])) as running:
        running.gzip_files.add("observation")
        running.register(CLIENT_ID, KID, keys.rsa_public)
        running.register("ec-client", "ec-key", keys.ec_public)
        yield running


def credentials(keys: Keys, server: BulkServer | None = None, *, pem: Path | None = None) -> ClientCredentials:
    return ClientCredentials(
        CLIENT_ID, load_signing_key(pem or keys.rsa_pem, KID), token_url=server.token_url if server else None
    )


class RecordingClient(BulkClient):
    """A client with its own token cache that records its waits instead of sleeping."""

    def __init__(self, server: BulkServer, creds: ClientCredentials) -> None:
        self.waits: list[float] = []
        super().__init__(server.base, creds, tokens=TokenCache(), sleep=self.waits.append)


def client(server: BulkServer, creds: ClientCredentials) -> RecordingClient:
    return RecordingClient(server, creds)


# -- the SMART Backend Services token ---------------------------------------------------------------


def test_token_from_a_verified_assertion_discovered_endpoint_and_cache(server: BulkServer, keys: Keys) -> None:
    with client(server, credentials(keys)) as bulk:
        token = bulk.token()
        assert token in server.tokens and bulk.token() == token  # cached: one request
        assert bulk.token(renew=True) != token  # a fresh assertion, a fresh jti: the server accepts it
    assert any(s.path == "/fhir/.well-known/smart-configuration" for s in server.seen)
    assert len(server.token_forms) == 2
    form = server.token_forms[0]
    assert (form["grant_type"], form["client_assertion_type"], form["scope"]) == (
        "client_credentials",
        ASSERTION_TYPE,
        DEFAULT_SCOPE,
    )
    (header, claims), (_, second) = server.assertions
    assert (header["alg"], header["kid"]) == ("RS384", KID)
    assert claims["iss"] == claims["sub"] == CLIENT_ID and claims["aud"] == server.token_url
    assert claims["exp"] <= time.time() + 300 and claims["jti"] != second["jti"]
    replayed = httpx.post(server.token_url, data=server.token_forms[0])  # the server refuses a jti it has seen
    assert replayed.status_code == 401 and replayed.json()["error_description"] == "jti already used"


def test_es384_jwk_key_with_its_own_kid(server: BulkServer, keys: Keys) -> None:
    creds = ClientCredentials("ec-client", load_signing_key(keys.ec_jwk), scope="system/*.rs", token_url=server.token_url)
    with client(server, creds) as bulk:
        assert bulk.token() in server.tokens
    header, _ = server.assertions[0]
    assert (header["alg"], header["kid"]) == ("ES384", "ec-key")
    assert server.token_forms[0]["scope"] == "system/*.rs"


def test_a_wrong_key_is_a_clear_error_without_a_token(server: BulkServer, keys: Keys) -> None:
    with client(server, credentials(keys, server, pem=keys.other_pem)) as bulk, pytest.raises(TokenError) as raised:
        bulk.kickoff()
    message = str(raised.value)
    assert (
        f"refused client {CLIENT_ID!r}" in message and "invalid_client" in message and "Signature verification failed" in message
    )
    assert not server.tokens and not server.kickoffs


def test_an_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(BulkExportError, match="not an unencrypted PEM private key"):
        load_signing_key(tmp_path / "key.pem")
    (tmp_path / "public.json").write_text(json.dumps({"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}))
    with pytest.raises(BulkExportError, match="no private key"):
        load_signing_key(tmp_path / "public.json")


def test_token_cache_expires_early_and_a_revoked_token_is_renewed(server: BulkServer, keys: Keys) -> None:
    cache = TokenCache()
    cache.put(("t", "c", "s"), "short-lived", 0.0)
    assert cache.get(("t", "c", "s")) is None
    with client(server, credentials(keys, server)) as bulk:
        bulk.kickoff()
        server.tokens.clear()  # the server revokes every token: the next call gets a 401 and renews once
        bulk.kickoff()
    assert len(server.token_forms) == 2 and len(server.kickoffs) == 2


# -- kick-off ------------------------------------------------------------------------------------


def test_system_and_group_kickoff(server: BulkServer, keys: Keys) -> None:
    with client(server, credentials(keys, server)) as bulk:
        system = bulk.kickoff()
        group = bulk.kickoff("knee-clinic")
        with pytest.raises(BulkExportError, match="no Group elsewhere"):
            bulk.kickoff("elsewhere")
    assert system.startswith(server.url + "/status/") and group.startswith(server.url + "/status/") and system != group
    first, second = server.kickoffs
    assert (first.path, second.path) == ("/fhir/$export", "/fhir/Group/knee-clinic/$export")
    for seen in (first, second):
        assert seen.query["_type"] == ["Patient,Condition,Observation,Procedure,ServiceRequest"]
        assert seen.headers["prefer"] == "respond-async" and seen.headers["accept"] == "application/fhir+json"
        assert server.authorized(seen.headers)
    assert len(server.token_forms) == 1  # the token is cached across calls


def test_kickoff_error_names_the_operation_outcome(server: BulkServer, keys: Keys) -> None:
    server.kickoff_error = (500, outcome("bulk export is switched off on this server", "exception"))
    with client(server, credentials(keys, server)) as bulk, pytest.raises(BulkExportError) as raised:
        bulk.kickoff()
    assert str(raised.value) == (
        f"the export kick-off at {server.base}/$export failed: HTTP 500: bulk export is switched off on this server"
    )
    assert sum(1 for s in server.seen if s.path == "/fhir/$export") == 1  # a 500 may have started an export: not repeated


# -- polling --------------------------------------------------------------------------------------


def test_polling_honours_202_retry_after_and_a_transient_503(server: BulkServer, keys: Keys) -> None:
    server.script = [202, 202, 503, 429, 202]
    with client(server, credentials(keys, server)) as bulk:
        status = bulk.kickoff()
        first = bulk.poll(status)
        assert first == Pending(0.0, progress="exporting")
        manifest = bulk.wait(status)
        assert bulk.waits == [0.0, 0.0, 0.0, 0.0]  # Retry-After: 0 every time
    assert server.polls == 6
    assert isinstance(manifest, Manifest) and manifest.requires_access_token
    assert [f.type for f in manifest.output] == [
        "Patient",
        "Condition",
        "Condition",
        "Observation",
        "Procedure",
        "ServiceRequest",
    ]
    assert manifest.error[0].type == "OperationOutcome"


def test_polling_without_retry_after_backs_off_and_gives_up_on_repeated_failures(server: BulkServer, keys: Keys) -> None:
    server.retry_after = None
    server.script = [202, 202, 202, 503, 503, 503]
    with client(server, credentials(keys, server)) as bulk:
        status = bulk.kickoff()
        with pytest.raises(BulkExportError, match=r"kept failing: HTTP 503: busy, try again"):
            bulk.wait(status, max_transient=2)
        assert bulk.waits == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_polling_a_failed_export_is_final(server: BulkServer, keys: Keys) -> None:
    server.script = [404]
    with client(server, credentials(keys, server)) as bulk, pytest.raises(BulkExportError, match="HTTP 404: busy"):
        bulk.poll(bulk.kickoff())


def test_retry_after_and_backoff() -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert retry_after("7") == 7.0
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None
    assert [backoff(n) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert next_wait(httpx.Response(202, headers={"Retry-After": "3600"}), 0) == 60.0
    assert next_wait(httpx.Response(202), 2) == 4.0


# -- download -------------------------------------------------------------------------------------


def test_download_every_file_with_the_token(server: BulkServer, keys: Keys, people: Population, tmp_path: Path) -> None:
    server.script = []
    with client(server, credentials(keys, server)) as bulk:
        manifest = bulk.wait(bulk.kickoff())
        downloaded = bulk.download(manifest, tmp_path / "export")
        again = bulk.download(manifest, tmp_path / "export")  # complete files are not fetched twice
    names = [p.name for p in downloaded.files]
    assert names == [
        "Patient.1.ndjson",
        "Condition.1.ndjson",
        "Condition.2.ndjson",
        "Observation.1.ndjson",
        "Procedure.1.ndjson",
        "ServiceRequest.1.ndjson",
    ]
    assert again.files == downloaded.files
    for path, (_, content) in zip(downloaded.files, people.files.values(), strict=True):
        assert path.read_bytes() == content  # the gzip-encoded Observation file arrives decoded
    assert [p.name for p in downloaded.error_files] == ["OperationOutcome.1.ndjson"] and downloaded.errors == 1
    assert downloaded.counts == {"Patient": 1, "Condition": 2, "Observation": 1, "Procedure": 1, "ServiceRequest": 1}
    requests = server.file_requests()
    assert len(requests) == 7 and all(server.authorized(r.headers) for r in requests)
    assert not list((tmp_path / "export").glob("*.part-*"))
    assert httpx.get(f"{server.url}/files/patients").status_code == 401
    (observations,) = [r for r in requests if r.path == "/files/observation"]
    assert "gzip" in observations.headers["accept-encoding"]  # served gzip-encoded, stored decoded


# -- Celery tasks and the command ------------------------------------------------------------------


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Eager mode on the embedded SQLite database; 3 patients a chunk so the job has several chunks."""
    for name in ("SPINE_CDS_REDIS_URL", "SPINE_CDS_DATABASE_URL", "SPINE_CDS_SETTINGS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPINE_CDS_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("SPINE_CDS_POPULATION_CHUNK_SIZE", "3")
    return tmp_path / "instance"


def export_args(server: BulkServer, keys: Keys, *extra: str) -> list[str]:
    return [
        "population",
        "export",
        "--fhir-base",
        server.base,
        "--client-id",
        CLIENT_ID,
        "--private-key",
        str(keys.rsa_pem),
        "--kid",
        KID,
        "--today",
        TODAY.isoformat(),
        *extra,
    ]


def job_rows(instance: Path) -> tuple[dict[str, Any], dict[str, int], set[str]]:
    engine = make_engine(load_settings().effective_database_url)
    try:
        with engine.connect() as connection:
            (job,) = [dict(row) for row in connection.execute(select(PopulationJob)).mappings()]
            counts = dict(
                connection.execute(
                    select(PopulationAssessment.patient_id, func.count()).group_by(PopulationAssessment.patient_id)
                ).all()
            )
            flagged = set(
                connection.execute(
                    select(PopulationAssessment.patient_id).where(PopulationAssessment.worklist.is_(True))
                ).scalars()
            )
    finally:
        engine.dispose()
    return job, counts, flagged


def test_population_export_command_scores_every_patient_once(
    server: BulkServer, keys: Keys, people: Population, instance: Path
) -> None:
    result = CliRunner().invoke(main, export_args(server, keys, "--group", "knee-clinic"))
    assert result.exit_code == 0, result.output
    job, counts, flagged = job_rows(instance)
    assert job["status"] == "done" and job["error"] is None, job
    assert counts == dict.fromkeys(people.patients, 1)  # every patient scored exactly once
    assert (job["patients_scored"], job["patients_failed"], job["chunks_total"]) == (len(people.patients), 0, 3)
    assert flagged == people.worklist and job["worklisted"] == len(people.worklist)
    folder = population.job_dir(instance, job["id"])
    with (folder / "worklist.csv").open(newline="") as rows:
        assert {row["patient_id"] for row in csv.DictReader(rows)} == people.worklist
    assert f"{len(people.worklist)} on the worklist" in result.output

    # the job's source is now the export folder; what was exported is described beside the files
    assert job["source"] == str((folder / "export").resolve())
    described = json.loads((folder / "export" / "export.json").read_text())
    assert (described["group"], described["errors"], described["files_by_type"]["Condition"]) == ("knee-clinic", 1, 2)
    assert (folder / "export" / "errors" / "OperationOutcome.1.ndjson").exists()

    assert [k.path for k in server.kickoffs] == ["/fhir/Group/knee-clinic/$export"]
    assert server.polls == 3 and len(server.deleted) == 1  # two 202s, the manifest, then the clean-up
    assert len(server.token_forms) == 1  # kick-off, polls and downloads share the worker's cached token
    assert sum(1 for s in server.seen if s.path.endswith("/smart-configuration")) == 1  # and its discovered endpoint
    assert all(server.authorized(r.headers) for r in server.file_requests())
    token = next(iter(server.tokens))
    assert token not in result.output and token not in json.dumps(job, default=str)


def test_population_export_kickoff_failure_fails_the_job(server: BulkServer, keys: Keys, instance: Path) -> None:
    server.kickoff_error = (500, outcome("bulk export is switched off on this server", "exception"))
    result = CliRunner().invoke(main, export_args(server, keys))
    assert result.exit_code == 1, result.output
    job, counts, _ = job_rows(instance)
    assert job["status"] == "failed" and not counts
    assert (
        job["error"]
        == f"the export kick-off at {server.base}/$export failed: HTTP 500: bulk export is switched off on this server"
    )
    assert "error: the export kick-off" in result.output
    spec = ExportSpec.from_json(job["source"])  # the parameters stay for inspection; the key is only a path
    assert (spec.fhir, spec.client_id, spec.key_path, spec.status_url) == (server.base, CLIENT_ID, str(keys.rsa_pem), None)


def test_population_export_rejects_a_key_that_cannot_sign(tmp_path: Path, instance: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    args = ["population", "export", "--fhir-base", "https://ehr.example.org/fhir", "--client-id", "c"]
    result = CliRunner().invoke(main, [*args, "--private-key", str(tmp_path / "key.pem")])
    assert result.exit_code == 1 and "not an unencrypted PEM private key" in result.output
    assert not instance.exists()  # nothing was created


def exporting_job(server: BulkServer, keys: Keys, status_url: str | None = None) -> str:
    settings = load_settings()
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    app = make_celery(settings)
    app.set_current()
    app.set_default()
    spec = ExportSpec(server.base, CLIENT_ID, str(keys.rsa_pem), kid=KID, status_url=status_url, kicked_off_at=time.time())
    job_id = population.create_job(engine, load_model(), spec.to_json(), TODAY)
    with engine.begin() as connection:
        population.set_status(connection, job_id, "exporting")
    engine.dispose()
    return job_id


def test_a_restarted_job_polls_its_export_instead_of_starting_another(
    server: BulkServer, keys: Keys, people: Population, instance: Path
) -> None:
    from worker.export_tasks import export_kickoff

    with client(server, credentials(keys, server)) as bulk:
        status_url = bulk.kickoff()
    job_id = exporting_job(server, keys, status_url)
    export_kickoff.delay(job_id)
    job, counts, flagged = job_rows(instance)
    assert (job["id"], job["status"]) == (job_id, "done")
    assert len(server.kickoffs) == 1  # only the one before the "restart"
    assert counts == dict.fromkeys(people.patients, 1) and flagged == people.worklist


def test_with_a_queue_the_poll_task_enqueues_itself_with_a_capped_countdown(
    server: BulkServer, keys: Keys, instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import export_tasks

    server.retry_after = None
    server.script = [202, 202, 202]
    with client(server, credentials(keys, server)) as bulk:
        status_url = bulk.kickoff()
    job_id = exporting_job(server, keys, status_url)
    conf = export_tasks.export_poll.app.conf
    eager = conf.get("task_always_eager", False)
    conf.update(task_always_eager=False)  # as with Redis; nothing is sent
    enqueued: list[tuple[Any, float]] = []
    monkeypatch.setattr(export_tasks.export_poll, "apply_async", lambda args, countdown: enqueued.append((args, countdown)))
    try:
        assert export_tasks.export_poll(job_id) == "polling"
        assert export_tasks.export_poll(job_id, 1, 0) == "polling"
        assert export_tasks.export_poll(job_id, 9, 0) == "polling"
    finally:
        conf.update(task_always_eager=eager)
    assert enqueued == [((job_id, 1, 0), 1.0), ((job_id, 2, 0), 2.0), ((job_id, 10, 0), 60.0)]
    job, _, _ = job_rows(instance)
    assert job["status"] == "exporting" and server.polls == 3
