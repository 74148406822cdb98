"""Real peers for the service's tests: a FHIR server, a JWKS endpoint, and an EHR that signs calls."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import FromClause, func, select, text
from sqlalchemy.engine import Engine
from werkzeug.serving import make_server

from cds_service.database import make_engine
from cds_service.decision_log.tables import Decision, Feedback

Handler = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, Any]]


# auditor passwords hashed cheaply in tests (the default, scrypt, costs ~0.3 s a check on these two cores)
CHEAP_PASSWORD_HASH = "pbkdf2:sha256:1"


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class Resolver:
    """A `socket.getaddrinfo` stand-in: names from `table`, address literals as themselves, others unknown;
    the names asked for are kept in `calls`. Only loopback addresses are ever connected to in tests."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            if host not in self.table:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            addresses = self.table[host]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]


class _Server(ThreadingHTTPServer):
    # the default backlog of 5 drops connections when a service fetches many keys for many calls at once,
    # and a dropped SYN is retried a second later: a delay of the test server's, not of the service's
    request_queue_size = 128


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` over real HTTP on a free loopback port; yields the base URL, stops on exit."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class HttpPeer:
    """A tiny real HTTP server answering JSON from a handler, recording every request."""

    handler: Handler
    requests: list[RecordedRequest] = field(default_factory=list)
    url: str = ""

    @contextmanager
    def running(self) -> Iterator[HttpPeer]:
        peer = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                query = parse_qs(parts.query)
                peer.requests.append(RecordedRequest(parts.path, query, headers))
                status, body = peer.handler(parts.path, query, headers)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        with http_server(_Handler) as self.url:
            yield self


class FhirServer:
    """An in-memory FHIR R4 server: read by id; search by patient, `code` and `category` tokens (`system|code`,
    comma-separated) and `_count`; paginated searchset Bundles. With `require_observation_filter` it refuses an
    Observation search by patient alone, as Epic and US Core servers do."""

    def __init__(
        self,
        resources: list[dict[str, Any]],
        page_size: int = 50,
        token: str | None = None,
        *,
        require_observation_filter: bool = False,
    ) -> None:
        self.resources = resources
        self.page_size = page_size
        self.token = token
        self.require_observation_filter = require_observation_filter
        self.fail_types: set[str] = set()
        self.peer = HttpPeer(self._handle)

    @property
    def base(self) -> str:
        return self.peer.url + "/fhir"

    def _handle(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return 401, _outcome("login")
        parts = path.removeprefix("/fhir/").split("/")
        resource_type = parts[0]
        if resource_type in self.fail_types:
            return 500, _outcome("exception")
        if len(parts) == 2:
            for resource in self.resources:
                if resource["resourceType"] == resource_type and resource.get("id") == parts[1]:
                    return 200, resource
            return 404, _outcome("not-found")
        if resource_type == "Observation" and self.require_observation_filter and not ({"code", "category"} & set(query)):
            return 400, _outcome("required", "An Observation search needs a code or category parameter besides patient.")
        patient = query.get("patient", [""])[0]
        matches = [
            r
            for r in self.resources
            if r["resourceType"] == resource_type
            and (r.get("subject") or {}).get("reference") == f"Patient/{patient}"
            and _has_token(r.get("code"), query.get("code"))
            and _has_token(r.get("category"), query.get("category"))
        ]
        # `_count` asks for a page size; the server keeps to its own maximum, as real servers do
        page_size = min(int(query.get("_count", [str(self.page_size)])[0]), self.page_size)
        offset = int(query.get("_offset", ["0"])[0])
        page = matches[offset : offset + page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [
                {"fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                for r in page
            ],
        }
        if offset + page_size < len(matches):
            kept = {k: v[0] for k, v in query.items() if k != "_offset"}
            kept["_offset"] = str(offset + page_size)
            bundle["link"] = [{"relation": "next", "url": f"{self.base}/{resource_type}?{urlencode(kept)}"}]
        return 200, bundle


def _outcome(code: str, text: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code}
    if text:
        issue["diagnostics"] = text
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _has_token(concepts: Any, wanted: list[str] | None) -> bool:
    """Whether a CodeableConcept (or a list of them) holds one of the token search's `system|code` values."""
    if not wanted:
        return True
    tokens = {t for value in wanted for t in value.split(",")}
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        for coding in (concept or {}).get("coding") or []:
            system, code = coding.get("system", ""), coding.get("code", "")
            if code in tokens or f"{system}|{code}" in tokens:
                return True
    return False


class SigningEhr:
    """An EHR's signing keys (ES384 and RS384) and the JWTs it would send."""

    def __init__(self, issuer: str = "https://ehr.example.org") -> None:
        self.issuer = issuer
        self.ec_key = ec.generate_private_key(ec.SECP384R1())
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_public = json.loads(ECAlgorithm.to_jwk(self.ec_key.public_key()))
        ec_public.update(kid="ec-1", alg="ES384", use="sig")
        rsa_public = json.loads(RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        rsa_public.update(kid="rsa-1", alg="RS384", use="sig")
        self.jwks = {"keys": [ec_public, rsa_public]}

    def token(self, audience: str, *, alg: str = "ES384", headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "ehr-client",
            "aud": audience,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        key = self.ec_key if alg.startswith("ES") else self.rsa_key
        kid = "ec-1" if alg.startswith("ES") else "rsa-1"
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **(headers or {})})


@dataclass
class RunningService:
    base_url: str
    app: Any
    ehr: SigningEhr
    client: httpx.Client

    def headers(self, path: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ehr.token(self.base_url + path, **claims)}"}

    def post(self, path: str, body: Any, **claims: Any) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.headers(path, **claims))

    def get(self, path: str, **claims: Any) -> httpx.Response:
        return self.client.get(path, headers=self.headers(path, **claims))


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve a WSGI app over real HTTP on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


# -- helpers for the hook-call, prefetch, decision-log and feedback tests --------------------------


def post_raw(running: RunningService, path: str, content: bytes, content_type: str = "application/json") -> httpx.Response:
    """POST bytes as they are (malformed JSON, other media types), signed like any other call."""
    return running.client.post(path, content=content, headers={**running.headers(path), "Content-Type": content_type})


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The {"code", "message"} of a JSON error answer; fails when the answer is not one."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], error
    assert isinstance(error.get("message"), str) and error["message"], error
    return error


class LogReader:
    """Reads the decision log through its own connection, so only committed rows are seen."""

    def __init__(self, database_url: str) -> None:
        self.engine: Engine = make_engine(database_url)

    @classmethod
    def of(cls, running: RunningService) -> LogReader:
        return cls(running.app.extensions["spine_cds"].settings.effective_database_url)

    def _rows(self, table: FromClause, where: dict[str, Any]) -> list[dict[str, Any]]:
        query = select(table).where(*(table.c[k] == v for k, v in where.items())).order_by(table.c.id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def decisions(self, **where: Any) -> list[dict[str, Any]]:
        return self._rows(Decision.__table__, where)

    def decision(self, **where: Any) -> dict[str, Any]:
        rows = self.decisions(**where)
        assert len(rows) == 1, rows
        return rows[0]

    def feedback(self, **where: Any) -> list[dict[str, Any]]:
        return self._rows(Feedback.__table__, where)

    def count(self, table_name: str) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(text(table_name))).scalar_one())

    def scalars(self, sql: str) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql)).scalars())

    def close(self) -> None:
        self.engine.dispose()


def _absolute_url(value: Any) -> bool:
    parts = urlsplit(value) if isinstance(value, str) else None
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def _empty_members(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        found = [f"{path}.{k} is null or empty" for k, v in value.items() if v is None or v in ("", [], {})]
        return found + [p for k, v in value.items() for p in _empty_members(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _empty_members(v, f"{path}[{i}]")]
    return []


def _coding_problems(coding: Any, where: str, display_required: bool) -> list[str]:
    if not isinstance(coding, dict):
        return [f"{where} is not a Coding object"]
    problems = [f"{where}.{k} is not a string" for k in ("system", "code") if not isinstance(coding.get(k), str)]
    if display_required and not isinstance(coding.get("display"), str):
        problems.append(f"{where}.display is required")
    return problems


def card_problems(card: Any) -> list[str]:
    """What is wrong with one card under CDS Hooks 2.0 (and this service's own rules); [] when valid."""
    if not isinstance(card, dict):
        return ["the card is not an object"]
    problems = _empty_members(card, "card")
    if not isinstance(card.get("uuid"), str):
        problems.append("uuid is not a string")
    summary = card.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) >= 140:
        problems.append("summary is not a string of fewer than 140 characters")
    if "detail" in card and not isinstance(card["detail"], str):
        problems.append("detail is not a (Markdown) string")
    if card.get("indicator") not in ("info", "warning"):
        problems.append(f"indicator {card.get('indicator')!r} is not info or warning")
    source = card.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("label"), str):
        problems.append("source.label is required")
    else:
        if "url" in source and not _absolute_url(source["url"]):
            problems.append("source.url is not an absolute URL")
        if "icon" in source and not _absolute_url(source["icon"]):
            problems.append("source.icon is not an absolute URL")
        if "topic" in source:
            problems += _coding_problems(source["topic"], "source.topic", display_required=False)
    suggestions = card.get("suggestions", [])
    if not isinstance(suggestions, list):
        problems.append("suggestions is not an array")
        suggestions = []
    if suggestions and card.get("selectionBehavior") not in ("at-most-one", "any"):
        problems.append("selectionBehavior must be at-most-one or any when suggestions are present")
    for i, suggestion in enumerate(suggestions):
        where = f"suggestions[{i}]"
        if not isinstance(suggestion, dict) or not isinstance(suggestion.get("label"), str):
            problems.append(f"{where}.label is required")
            continue
        if "uuid" in suggestion and not isinstance(suggestion["uuid"], str):
            problems.append(f"{where}.uuid is not a string")
        if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
            problems.append(f"{where}.isRecommended is not a boolean")
        actions = suggestion.get("actions", [])
        for j, action in enumerate(actions if isinstance(actions, list) else [None]):
            at = f"{where}.actions[{j}]"
            if not isinstance(action, dict):
                problems.append(f"{at} is not an object")
                continue
            if action.get("type") not in ("create", "update", "delete"):
                problems.append(f"{at}.type is not create, update or delete")
            if not isinstance(action.get("description"), str):
                problems.append(f"{at}.description is required")
            resource = action.get("resource")
            if action.get("type") in ("create", "update") and not (
                isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)
            ):
                problems.append(f"{at}.resource is not a FHIR resource")
            if action.get("type") == "create" and isinstance(resource, dict) and "id" in resource:
                problems.append(f"{at}.resource of a create action carries an id")
            if action.get("type") == "delete" and isinstance(resource, str):
                problems.append(f"{at}.resource must not be an id string for delete")
    for i, reason in enumerate(card.get("overrideReasons", [])):
        problems += _coding_problems(reason, f"overrideReasons[{i}]", display_required=True)
    for i, link in enumerate(card.get("links", [])):
        where = f"links[{i}]"
        if not isinstance(link, dict) or not isinstance(link.get("label"), str):
            problems.append(f"{where}.label is required")
            continue
        if not _absolute_url(link.get("url")):
            problems.append(f"{where}.url is not an absolute URL")
        if link.get("type") not in ("absolute", "smart"):
            problems.append(f"{where}.type is not absolute or smart")
        if link.get("type") == "absolute" and "appContext" in link:
            problems.append(f"{where}.appContext is set on an absolute link")
    return problems


def assert_cards_response(response: httpx.Response) -> list[dict[str, Any]]:
    """A 200 answer whose body is {"cards": [...]} with every card valid; returns the cards."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("cards"), list), body
    cards: list[dict[str, Any]] = body["cards"]
    for card in cards:
        assert card_problems(card) == [], card_problems(card)
    return cards


def resources_from_transaction(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A transaction Bundle's resources as a FHIR server would hold them: with ids, relative references."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    targets: dict[str, str] = {}
    resources: list[dict[str, Any]] = []
    for entry in entries:
        resource = json.loads(json.dumps(entry["resource"]))
        full_url = str(entry.get("fullUrl", ""))
        if "id" not in resource and full_url.startswith("urn:uuid:"):
            resource["id"] = full_url[len("urn:uuid:") :]
        if full_url.startswith("urn:uuid:") and "id" in resource:
            targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append(resource)

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (targets.get(v, v) if k == "reference" and isinstance(v, str) else rewrite(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return [rewrite(r) for r in resources]
