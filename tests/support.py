"""Real peers for the service's tests: a FHIR server, a JWKS endpoint, and an EHR that signs calls."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from werkzeug.serving import make_server

Handler = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, Any]]


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


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

        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{server.server_port}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


class FhirServer:
    """An in-memory FHIR R4 server: read by id, search by patient, paginated searchset Bundles."""

    def __init__(self, resources: list[dict[str, Any]], page_size: int = 50, token: str | None = None) -> None:
        self.resources = resources
        self.page_size = page_size
        self.token = token
        self.fail_types: set[str] = set()
        self.peer = HttpPeer(self._handle)

    @property
    def base(self) -> str:
        return self.peer.url + "/fhir"

    def _handle(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}
        parts = path.removeprefix("/fhir/").split("/")
        resource_type = parts[0]
        if resource_type in self.fail_types:
            return 500, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
        if len(parts) == 2:
            for resource in self.resources:
                if resource["resourceType"] == resource_type and resource.get("id") == parts[1]:
                    return 200, resource
            return 404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
        patient = query.get("patient", [""])[0]
        matches = [
            r
            for r in self.resources
            if r["resourceType"] == resource_type and (r.get("subject") or {}).get("reference") == f"Patient/{patient}"
        ]
        offset = int(query.get("_offset", ["0"])[0])
        page = matches[offset : offset + self.page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in page],
        }
        if offset + self.page_size < len(matches):
            bundle["link"] = [{"relation": "next", "url": f"{self.base}/{resource_type}?patient={patient}&_offset={offset + self.page_size}"}]
        return 200, bundle


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
        payload: dict[str, Any] = {"iss": self.issuer, "sub": "ehr-client", "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
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

    def post(self, path: str, body: Any, **claims: Any) -> httpx.Response:  # noqa: ANN401
        return self.client.post(path, json=body, headers=self.headers(path, **claims))

    def get(self, path: str, **claims: Any) -> httpx.Response:
        return self.client.get(path, headers=self.headers(path, **claims))


@contextmanager
def serve(app: Any) -> Iterator[str]:  # noqa: ANN401 - a WSGI app
    """Serve a WSGI app over real HTTP on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
