"""The EHR-signed JWT on every call (CDS Hooks 2.0, "Trusting CDS Clients"), over real HTTP.

Every rejection is a bare 401 (empty body, `WWW-Authenticate: Bearer`); the reason is only logged,
and neither the JWT nor the EHR's FHIR access token is ever logged or stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Engine

from cds_service.cds_hooks import auth
from cds_service.cds_hooks.auth import DatabaseReplayStore, RedisReplayStore
from cds_service.cds_hooks.tables import SeenToken
from cds_service.database import make_engine, upgrade
from cds_service.settings import SettingsError, load_settings
from hooks.synthetic import generate
from tests.cds_service.requests import TODAY, patient_view
from tests.conftest import redis_client_or_skip
from tests.support import FhirServer, HttpPeer, RunningService, SigningEhr

ServiceFactory = Callable[..., RunningService]

SERVICE_PATH = "/cds-services/spine-knee-patient-view"
FEEDBACK_PATH = SERVICE_PATH + "/feedback"
DISCOVERY_PATH = "/cds-services"
REDIS_URL = "redis://127.0.0.1:6379/15"


# ---------------------------------------------------------------------------------------------
# Helpers: tokens built by hand, extra key pairs, the three authenticated endpoints
# ---------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(issuer: str, audience: str | list[str], **changes: Any) -> dict[str, Any]:
    """The payload SigningEhr would sign; a change to None drops the claim."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": "ehr-client",
        "aud": audience,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWS assembled without PyJWT (which refuses to build the attacks below)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode("ascii")) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def es384(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    """A valid ES384 signature, for claims PyJWT will not encode (a non-string `iss`)."""
    return lambda data: ECAlgorithm(ECAlgorithm.SHA384).sign(data, key)


@dataclass
class KeyPair:
    """An extra EC P-384 signing key with its own kid (for rotation and jku key sets)."""

    kid: str
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, kid: str) -> KeyPair:
        return cls(kid, ec.generate_private_key(ec.SECP384R1()))

    @property
    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        public.update(kid=self.kid, alg="ES384", use="sig")
        return public

    def sign(self, payload: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(payload, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT", **headers})


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass(frozen=True)
class Endpoint:
    """One authenticated endpoint and a valid body for it, so only the token decides the answer."""

    name: str
    method: str
    path: str

    def audience(self, running: RunningService) -> str:
        return running.base_url + self.path

    def body(self, running: RunningService, **claims: Any) -> dict[str, Any] | None:
        """A valid body; for feedback a card is asked for first, with these claims in that call's token."""
        if self.method == "GET":
            return None
        if self.path == SERVICE_PATH:
            return patient_view()
        # feedback names a card this service issued: ask for one first
        answer = running.post(SERVICE_PATH, patient_view(), **claims)
        assert answer.status_code == 200, answer.text
        card = answer.json()["cards"][0]["uuid"]
        return {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": datetime.now(UTC).isoformat()}]}

    def send(self, running: RunningService, authorization: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
        if body is None:
            body = self.body(running)
        headers = {} if authorization is None else {"Authorization": authorization}
        if self.method == "GET":
            return running.client.get(self.path, headers=headers)
        return running.client.post(self.path, json=body, headers=headers)


DISCOVERY = Endpoint("discovery", "GET", DISCOVERY_PATH)
SERVICE_CALL = Endpoint("service-call", "POST", SERVICE_PATH)
FEEDBACK = Endpoint("feedback", "POST", FEEDBACK_PATH)
ENDPOINTS = [DISCOVERY, SERVICE_CALL, FEEDBACK]

each_endpoint = pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text


def assert_bare_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.content == b""
    assert response.headers["WWW-Authenticate"] == "Bearer"


def rejection_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The reasons logged for the 401s so far, in order (the service logs "refused <method> <path>: <code>; <reason>")."""
    messages = [r.getMessage() for r in caplog.records if r.name == "cds_service.cds_hooks.auth"]
    return [m.split(": ", 1)[1].split("; ", 1)[1] for m in messages if m.startswith("refused ")]


def rejection_codes(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "cds_service.cds_hooks.auth"]
    return [m.split(": ", 1)[1].split("; ", 1)[0] for m in messages if m.startswith("refused ")]


def jwks_peer(holder: dict[str, Any]) -> HttpPeer:
    """A real HTTP JWKS endpoint serving whatever key set `holder["jwks"]` holds at /jwks.json."""

    def handle(path: str, _query: dict[str, list[str]], _headers: dict[str, str]) -> tuple[int, Any]:
        if path != "/jwks.json":
            return 404, {"error": "not found"}
        return 200, holder["jwks"]

    return HttpPeer(handle)


@pytest.fixture(scope="module")
def impostor(ehr: SigningEhr) -> SigningEhr:
    """Someone claiming the EHR's issuer and kids, with keys of their own."""
    return SigningEhr(issuer=ehr.issuer)


class FakeTime:
    """Stands in for the `time` module inside cds_service.cds_hooks.auth: wall time is real, monotonic time can jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def auth_clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(auth, "time", clock)
    return clock


# ---------------------------------------------------------------------------------------------
# Accepted tokens
# ---------------------------------------------------------------------------------------------


@each_endpoint
@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_signed_jwt_from_trusted_client_is_accepted(service: RunningService, endpoint: Endpoint, alg: str) -> None:
    """req 176, req 178, req 180, req 186, req 199: a JWT signed (ES384 or RS384) with a key from the
    issuer's out-of-band JWK Set, without `jku`, presented as a Bearer token, is accepted."""
    token = service.ehr.token(endpoint.audience(service), alg=alg)
    assert_ok(endpoint.send(service, bearer(token)))


@each_endpoint
def test_iat_within_clock_leeway_is_accepted(service: RunningService, endpoint: Endpoint) -> None:
    """req 191: an `iat` 30 s in the future (EHR clock ahead, within the 60 s leeway) is accepted."""
    now = int(time.time())
    token = service.ehr.token(endpoint.audience(service), iat=now + 30, exp=now + 330)
    assert_ok(endpoint.send(service, bearer(token)))


@each_endpoint
def test_nbf_in_the_past_is_accepted(service: RunningService, endpoint: Endpoint) -> None:
    """An optional `nbf` in the past does not stop the call."""
    token = service.ehr.token(endpoint.audience(service), nbf=int(time.time()) - 10)
    assert_ok(endpoint.send(service, bearer(token)))


@each_endpoint
def test_aud_as_array_containing_the_endpoint_is_accepted(service: RunningService, endpoint: Endpoint) -> None:
    """req 189: `aud` may be an array of strings containing the endpoint's URL."""
    audience = [endpoint.audience(service), "https://other-service.example.org/cds-services"]
    token = service.ehr.token("unused", aud=audience)
    assert_ok(endpoint.send(service, bearer(token)))


@each_endpoint
def test_tenant_and_extra_claims_are_accepted_when_tenant_listed(
    service_factory: ServiceFactory, ehr: SigningEhr, endpoint: Endpoint
) -> None:
    """req 193, req 194: `tenant` (listed for the issuer), `sub` and claims this service does not know are accepted."""
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "tenants": ["acme-health", "other"]}})
    token = ehr.token(endpoint.audience(running), sub="user-7", tenant="acme-health", fhirUser="Practitioner/dr-1")
    assert_ok(endpoint.send(running, bearer(token), endpoint.body(running, tenant="acme-health")))


@each_endpoint
def test_numeric_dates_may_be_fractional(service: RunningService, endpoint: Endpoint) -> None:
    """req 190, req 191: `exp` and `iat` are NumericDates, JSON numbers that need not be integers."""
    now = time.time()
    token = service.ehr.token(endpoint.audience(service), iat=now - 0.25, exp=now + 299.5, nbf=now - 10.5)
    assert_ok(endpoint.send(service, bearer(token)))


@each_endpoint
def test_lifetime_up_to_the_maximum_plus_leeway_is_accepted(service: RunningService, endpoint: Endpoint) -> None:
    """req 190: `exp - iat` of the maximum lifetime (300 s) plus the leeway (60 s) is still accepted."""
    now = int(time.time())
    token = service.ehr.token(endpoint.audience(service), iat=now, exp=now + 360)
    assert_ok(endpoint.send(service, bearer(token)))


# ---------------------------------------------------------------------------------------------
# Rejected tokens: always a bare 401
# ---------------------------------------------------------------------------------------------


@each_endpoint
def test_call_without_authorization_header_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 177, req 178: every endpoint requires authentication."""
    assert_bare_401(endpoint.send(service, None))


@each_endpoint
@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_bearer_scheme_name_is_case_insensitive(service: RunningService, endpoint: Endpoint, scheme: str) -> None:
    """RFC 7235: an authentication scheme name is matched without regard to case."""
    token = service.ehr.token(endpoint.audience(service))
    assert_ok(endpoint.send(service, f"{scheme} {token}"))


@each_endpoint
@pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT"])
def test_non_bearer_scheme_is_rejected(service: RunningService, endpoint: Endpoint, scheme: str) -> None:
    """req 178: the JWT must be presented as a "Bearer" token; a valid JWT under another scheme is refused."""
    token = service.ehr.token(endpoint.audience(service))
    assert_bare_401(endpoint.send(service, f"{scheme} {token}"))


@each_endpoint
def test_unsigned_token_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 176, req 180, req 181, req 201: `alg: none` with an empty signature is refused."""
    payload = claims(service.ehr.issuer, endpoint.audience(service))
    token = hand_made({"alg": "none", "typ": "JWT", "kid": "ec-1"}, payload)
    assert token.endswith(".")
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_hs256_token_with_shared_secret_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 180, req 203: only the client's private key may sign; a symmetric HS256 token is refused."""
    payload = claims(service.ehr.issuer, endpoint.audience(service))
    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": "ec-1"}, payload, hs256(b"a-shared-secret-nobody-configured"))
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
def test_hs256_token_keyed_with_the_public_key_is_rejected(service: RunningService, endpoint: Endpoint, kid: str) -> None:
    """req 180, req 203: the key-confusion attack (HMAC keyed with the issuer's public key PEM) is refused."""
    public = service.ehr.rsa_key.public_key() if kid == "rsa-1" else service.ehr.ec_key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = claims(service.ehr.issuer, endpoint.audience(service))
    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": kid}, payload, hs256(pem))
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_signature_by_another_key_with_same_kid_is_rejected(
    service: RunningService, endpoint: Endpoint, impostor: SigningEhr
) -> None:
    """req 176, req 180: the signature must verify with the trusted key the kid names."""
    token = impostor.token(endpoint.audience(service))
    assert jwt.get_unverified_header(token)["kid"] == "ec-1"
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_expired_token_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 190: an `exp` more than the 60 s leeway in the past is refused."""
    now = int(time.time())
    token = service.ehr.token(endpoint.audience(service), iat=now - 600, exp=now - 120)
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_iat_beyond_clock_leeway_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 191: an `iat` further in the future than the leeway is refused."""
    now = int(time.time())
    token = service.ehr.token(endpoint.audience(service), iat=now + 300, exp=now + 600)
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
@pytest.mark.parametrize("claim", ["exp", "iat", "aud", "iss"])
def test_token_missing_required_claim_is_rejected(service: RunningService, endpoint: Endpoint, claim: str) -> None:
    """req 187, req 189, req 190, req 191: `iss`, `aud`, `exp` and `iat` are required."""
    token = service.ehr.token(endpoint.audience(service), **{claim: None})
    assert claim not in jwt.decode(token, options={"verify_signature": False})
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_aud_of_another_endpoint_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 189, req 196: `aud` must be the URL of the endpoint being invoked, not another of this service's."""
    other = DISCOVERY if endpoint is not DISCOVERY else SERVICE_CALL
    token = service.ehr.token(other.audience(service))
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_unknown_issuer_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 187, req 195: only allow-listed `iss` values are trusted, even with a key the service knows."""
    token = service.ehr.token(endpoint.audience(service), iss="https://unknown-ehr.example.org")
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_token_without_jti_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 192: `jti` is required."""
    token = service.ehr.token(endpoint.audience(service), jti=None)
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_replayed_token_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 192: the same token (same `jti`) sent twice is accepted once."""
    token = service.ehr.token(endpoint.audience(service))
    body = endpoint.body(service)
    assert_ok(endpoint.send(service, bearer(token), body))
    assert_bare_401(endpoint.send(service, bearer(token), body))


@each_endpoint
def test_token_without_kid_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 182: the header must carry `kid`."""
    token = jwt.encode(claims(service.ehr.issuer, endpoint.audience(service)), service.ehr.ec_key, algorithm="ES384")
    assert "kid" not in jwt.get_unverified_header(token)
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_token_with_unknown_kid_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 182: the kid must name a key in the issuer's JWK Set."""
    token = service.ehr.token(endpoint.audience(service), headers={"kid": "ec-9"})
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_tenant_not_listed_for_issuer_is_rejected(service_factory: ServiceFactory, ehr: SigningEhr, endpoint: Endpoint) -> None:
    """req 193: a `tenant` the issuer's configuration does not list is refused."""
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "tenants": ["acme-health"]}})
    body = endpoint.body(running, tenant="acme-health")
    assert_bare_401(endpoint.send(running, bearer(ehr.token(endpoint.audience(running), tenant="someone-else")), body))


@each_endpoint
def test_token_without_tenant_to_an_issuer_restricted_to_tenants_is_rejected(
    service_factory: ServiceFactory, ehr: SigningEhr, endpoint: Endpoint
) -> None:
    """req 193: an issuer configured with tenants serves those tenants only: a token naming none is refused."""
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "tenants": ["acme-health"]}})
    body = endpoint.body(running, tenant="acme-health")
    assert_bare_401(endpoint.send(running, bearer(ehr.token(endpoint.audience(running))), body))


def _wrongly_typed(claim: str, kind: str) -> Any:
    now = int(time.time())
    number = {"exp": now + 300, "iat": now, "nbf": now - 10}[claim]
    return {"numeric string": str(number), "boolean": True, "array": [number], "beyond 64 bits": number * 10**20}[kind]


@each_endpoint
@pytest.mark.parametrize(
    ("claim", "kind"),
    [
        ("exp", "numeric string"),
        ("iat", "numeric string"),
        ("nbf", "numeric string"),
        ("iat", "boolean"),
        ("exp", "array"),
        ("exp", "beyond 64 bits"),
    ],
)
def test_numeric_date_that_is_not_a_json_number_is_rejected(
    service: RunningService, endpoint: Endpoint, claim: str, kind: str
) -> None:
    """req 190, req 191: `exp`, `iat` and `nbf` are JSON numbers (of 64 bits at most); "1999999999" or `true`
    is a 401 (not a 500, not accepted)."""
    token = service.ehr.token(endpoint.audience(service), **{claim: _wrongly_typed(claim, kind)})
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
@pytest.mark.parametrize(
    "jti", ["", 12345, ["a-jti"], {"id": "a-jti"}, True], ids=["empty", "number", "array", "object", "boolean"]
)
def test_jti_that_is_not_a_non_empty_string_is_rejected(service: RunningService, endpoint: Endpoint, jti: Any) -> None:
    """req 192: `jti` is a non-empty string (a number or an empty string would make replays hard to tell apart)."""
    token = service.ehr.token(endpoint.audience(service), jti=jti)
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
@pytest.mark.parametrize(("claim", "value"), [("sub", 42), ("tenant", ["acme-health"]), ("iss", 7)])
def test_string_claim_of_another_type_is_rejected(service: RunningService, endpoint: Endpoint, claim: str, value: Any) -> None:
    """req 187, req 193: `iss`, and `sub` and `tenant` when present, are strings."""
    payload = claims(service.ehr.issuer, endpoint.audience(service), **{claim: value})
    token = hand_made({"alg": "ES384", "typ": "JWT", "kid": "ec-1"}, payload, es384(service.ehr.ec_key))
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_aud_array_with_a_non_string_member_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 189: `aud` is a string or an array of strings."""
    token = service.ehr.token("unused", aud=[endpoint.audience(service), 7])
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_exp_ten_years_ahead_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 190: a token is for one call; `exp - iat` beyond the maximum lifetime (300 s) plus leeway is refused."""
    now = int(time.time())
    token = service.ehr.token(endpoint.audience(service), iat=now, exp=now + 10 * 366 * 86400)
    assert_bare_401(endpoint.send(service, bearer(token)))


@each_endpoint
def test_lifetime_just_beyond_the_maximum_plus_leeway_is_rejected(service: RunningService, endpoint: Endpoint) -> None:
    """req 190: one second more than the maximum lifetime plus leeway is refused; the maximum is a setting."""
    now = int(time.time())
    token = service.ehr.token(endpoint.audience(service), iat=now, exp=now + 361)
    assert_bare_401(endpoint.send(service, bearer(token)))


def test_maximum_lifetime_is_configurable(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """SPINE_CDS_JWT_MAX_LIFETIME_SECONDS: a site whose EHR issues longer-lived tokens can raise the limit."""
    running = service_factory(jwt_max_lifetime_seconds=900)
    now = int(time.time())
    audience = running.base_url + DISCOVERY_PATH
    assert_ok(DISCOVERY.send(running, bearer(ehr.token(audience, iat=now, exp=now + 960))))
    assert_bare_401(DISCOVERY.send(running, bearer(ehr.token(audience, iat=now, exp=now + 961))))


def test_rejection_reasons_name_the_reason_code(
    service_factory: ServiceFactory, ehr: SigningEhr, caplog: pytest.LogCaptureFixture
) -> None:
    """The logged reason of each 401 starts with a plain code an operator can search for."""
    caplog.set_level(logging.INFO, logger="cds_service.cds_hooks.auth")
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "tenants": ["acme-health"]}})
    audience = running.base_url + DISCOVERY_PATH
    now = int(time.time())
    replayed = ehr.token(audience, tenant="acme-health")
    assert_ok(DISCOVERY.send(running, bearer(replayed)))
    attempts = {
        "expired": ehr.token(audience, tenant="acme-health", iat=now - 600, exp=now - 120),
        "audience": ehr.token(running.base_url + SERVICE_PATH, tenant="acme-health"),
        "claim types": ehr.token(audience, tenant="acme-health", exp=str(now + 300)),
        "lifetime": ehr.token(audience, tenant="acme-health", exp=now + 3600),
        "tenant": ehr.token(audience),
        "key type": ehr.token(audience, tenant="acme-health", alg="RS384", headers={"kid": "ec-1"}),
        "replay": replayed,
    }
    for token in attempts.values():
        assert_bare_401(DISCOVERY.send(running, bearer(token)))
    reasons = rejection_reasons(caplog)
    assert [reason.split(":")[0].split(" (")[0] for reason in reasons] == list(attempts), reasons
    for token in attempts.values():
        assert not [reason for reason in reasons if token in reason]


@each_endpoint
def test_jku_not_allowlisted_is_rejected_without_fetching_it(service: RunningService, endpoint: Endpoint) -> None:
    """req 185, req 195: a `jku` outside the issuer's allow-list, for a kid the pinned keys do not hold, is
    refused and never dereferenced."""
    stranger = KeyPair.generate("stranger-1")
    peer = jwks_peer({"jwks": {"keys": [stranger.jwk]}})
    with peer.running():
        token = stranger.sign(claims(service.ehr.issuer, endpoint.audience(service)), jku=peer.url + "/jwks.json")
        assert_bare_401(endpoint.send(service, bearer(token)))
        assert peer.requests == []


@each_endpoint
def test_a_pinned_key_verifies_a_token_that_names_any_jku_and_nothing_is_fetched(
    service: RunningService, endpoint: Endpoint
) -> None:
    """The CDS Hooks Sandbox sends a `jku` with every token: with the issuer's keys pinned inline, the
    call is answered offline (the jku is neither allow-listed nor reachable)."""
    peer = jwks_peer({"jwks": service.ehr.jwks})
    with peer.running():
        token = service.ehr.token(endpoint.audience(service), headers={"jku": peer.url + "/jwks.json"})
        assert endpoint.send(service, bearer(token)).status_code == 200
        assert peer.requests == []


def test_jku_allowlisted_for_another_issuer_is_rejected_without_fetching_it(
    service_factory: ServiceFactory, ehr: SigningEhr
) -> None:
    """req 195: a jku is allow-listed per issuer; another issuer's allow-list does not count."""
    jku_key = KeyPair.generate("jku-partner")  # in the jku's key set only, not pinned for the issuer
    peer = jwks_peer({"jwks": {"keys": [jku_key.jwk]}})
    with peer.running():
        jku = peer.url + "/jwks.json"
        running = service_factory(
            trusted_issuers={
                ehr.issuer: {"jwks": ehr.jwks},
                "https://partner-ehr.example.org": {"jwks": {"keys": []}, "jku_allowlist": [jku]},
            }
        )
        token = jku_key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH), jku=jku)
        assert_bare_401(DISCOVERY.send(running, bearer(token)))
        assert peer.requests == []


# ---------------------------------------------------------------------------------------------
# Keys by URL: jwks_url and allow-listed jku
# ---------------------------------------------------------------------------------------------


def test_jwks_url_is_fetched_once_and_cached(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 197, req 199: the issuer's JWK Set configured by URL is fetched over HTTP and cached."""
    peer = jwks_peer({"jwks": ehr.jwks})
    with peer.running():
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": peer.url + "/jwks.json"}})
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH))))
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH, alg="RS384"))))
        assert [r.path for r in peer.requests] == ["/jwks.json"]


def test_unknown_kid_refetches_jwks_url_once(service_factory: ServiceFactory, ehr: SigningEhr, auth_clock: FakeTime) -> None:
    """req 197: after a key rotation the new kid is found by one refetch (rate-limited, not on every unknown kid)."""
    holder: dict[str, Any] = {"jwks": ehr.jwks}
    peer = jwks_peer(holder)
    rotated = KeyPair.generate("ec-2")
    with peer.running():
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": peer.url + "/jwks.json"}})
        audience = running.base_url + DISCOVERY_PATH
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(audience))))
        assert len(peer.requests) == 1

        holder["jwks"] = {"keys": [rotated.jwk]}
        # right after a fetch an unknown kid is not worth a refetch
        assert_bare_401(DISCOVERY.send(running, bearer(rotated.sign(claims(ehr.issuer, audience)))))
        assert len(peer.requests) == 1

        auth_clock.offset += auth._REFRESH_MIN_INTERVAL + 1  # still well inside jwks_cache_seconds
        assert_ok(DISCOVERY.send(running, bearer(rotated.sign(claims(ehr.issuer, audience)))))
        assert len(peer.requests) == 2
        assert_ok(DISCOVERY.send(running, bearer(rotated.sign(claims(ehr.issuer, audience)))))
        assert len(peer.requests) == 2


def test_jwks_url_cache_expires(service_factory: ServiceFactory, ehr: SigningEhr, auth_clock: FakeTime) -> None:
    """req 197: a cached JWK Set is fetched again once jwks_cache_seconds have passed."""
    peer = jwks_peer({"jwks": ehr.jwks})
    with peer.running():
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": peer.url + "/jwks.json"}}, jwks_cache_seconds=120)
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH))))
        auth_clock.offset += 121
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH))))
        assert len(peer.requests) == 2


def test_unavailable_jwks_url_rejects(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 197: when the JWK Set cannot be had (HTTP 500, not a key set) the call is a bare 401."""
    holder: dict[str, Any] = {"jwks": {"not": "a key set"}}

    def handle(path: str, _query: dict[str, list[str]], _headers: dict[str, str]) -> tuple[int, Any]:
        return (500, {}) if path == "/broken.json" else (200, holder["jwks"])

    peer = HttpPeer(handle)
    with peer.running():
        for path in ("/broken.json", "/jwks.json"):
            running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": peer.url + path}})
            assert_bare_401(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH))))
        assert [r.path for r in peer.requests] == ["/broken.json", "/jwks.json"]


def test_allowlisted_jku_is_fetched_and_trusted(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 185, req 195, req 198: a jku on the issuer's allow-list is dereferenced and its keys verify the JWT."""
    jku_key = KeyPair.generate("jku-1")  # in the jku's key set only, not in the inline one
    peer = jwks_peer({"jwks": {"keys": [jku_key.jwk]}})
    with peer.running():
        jku = peer.url + "/jwks.json"
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "jku_allowlist": [jku]}})
        for endpoint in ENDPOINTS:
            token = jku_key.sign(claims(ehr.issuer, endpoint.audience(running)), jku=jku)
            assert_ok(endpoint.send(running, bearer(token)))
        assert [r.path for r in peer.requests] == ["/jwks.json"]  # fetched once, then cached
        # without the jku header the inline key set is used, which does not hold jku-1
        token = jku_key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH))
        assert_bare_401(DISCOVERY.send(running, bearer(token)))


def test_jku_equal_to_issuer_jwks_url_is_accepted(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 185, req 198: a jku naming the issuer's configured jwks_url needs no separate allow-listing."""
    peer = jwks_peer({"jwks": ehr.jwks})
    with peer.running():
        url = peer.url + "/jwks.json"
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": url}})
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH, headers={"jku": url}))))
        assert [r.path for r in peer.requests] == ["/jwks.json"]


def test_jwks_url_with_allowlisted_jku(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 185, req 195, req 198: with jwks_url and an allow-listed jku, a token naming the jku is verified from it."""
    jku_key = KeyPair.generate("jku-2")
    peer = jwks_peer({"jwks": ehr.jwks})
    other = jwks_peer({"jwks": {"keys": [jku_key.jwk]}})
    with peer.running(), other.running():
        jku = other.url + "/jwks.json"
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": peer.url + "/jwks.json", "jku_allowlist": [jku]}})
        token = jku_key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH), jku=jku)
        assert_ok(DISCOVERY.send(running, bearer(token)))
        assert len(other.requests) == 1
        assert peer.requests == []


# ---------------------------------------------------------------------------------------------
# Keys: asymmetric only, fitting the token's alg, for signatures
# ---------------------------------------------------------------------------------------------


def test_symmetric_key_in_a_fetched_key_set_is_never_used(
    service_factory: ServiceFactory, ehr: SigningEhr, caplog: pytest.LogCaptureFixture
) -> None:
    """req 180, req 203: JWTs SHALL NOT be signed with symmetric algorithms. An `oct` key in the issuer's
    fetched JWK Set verifies nothing: neither an HS256 token signed with it, nor a token naming it under
    an asymmetric alg; the set's EC and RSA keys still verify."""
    secret = b"a-secret-the-ehr-should-never-have-published"
    oct_key = {"kty": "oct", "kid": "hmac-1", "k": b64url(secret), "use": "sig"}
    peer = jwks_peer({"jwks": {"keys": [oct_key, *ehr.jwks["keys"]]}})
    caplog.set_level(logging.INFO, logger="cds_service.cds_hooks.auth")
    with peer.running():
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": peer.url + "/jwks.json"}})
        audience = running.base_url + DISCOVERY_PATH
        for alg in ("HS256", "ES384", "RS384"):
            token = hand_made({"alg": alg, "typ": "JWT", "kid": "hmac-1"}, claims(ehr.issuer, audience), hs256(secret))
            assert_bare_401(DISCOVERY.send(running, bearer(token)))
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(audience))))
    reasons = rejection_reasons(caplog)
    assert reasons[0].startswith("algorithm"), reasons
    assert [reason.split(":")[0] for reason in reasons[1:]] == ["key type", "key type"], reasons


def test_symmetric_key_in_inline_jwks_stops_start_up(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 203: an inline `jwks` holding a symmetric (`oct`) key is a configuration error; the message
    names the problem and never the secret."""
    secret = b64url(b"a-shared-secret-in-the-settings")
    jwks = {"keys": [*ehr.jwks["keys"], {"kty": "oct", "kid": "hmac-1", "k": secret}]}
    with pytest.raises(SettingsError, match="symmetric key") as raised:
        service_factory(trusted_issuers={ehr.issuer: {"jwks": jwks}})
    assert "SPINE_CDS_TRUSTED_ISSUERS" in str(raised.value)
    assert secret not in str(raised.value)


@each_endpoint
def test_ec_key_offered_for_an_rs384_token_is_rejected(
    service: RunningService, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """req 180, req 182: the key a kid names must be of the token's algorithm family: an RS384 token (signed
    with the issuer's RSA key) whose kid names the EC key is refused for its key type."""
    caplog.set_level(logging.INFO, logger="cds_service.cds_hooks.auth")
    body = endpoint.body(service)
    token = service.ehr.token(endpoint.audience(service), alg="RS384", headers={"kid": "ec-1"})
    assert_bare_401(endpoint.send(service, bearer(token), body))
    assert rejection_reasons(caplog)[-1].startswith("key type:"), rejection_reasons(caplog)


@pytest.mark.parametrize(
    ("change", "code"),
    [({"alg": "ES512"}, "key alg"), ({"use": "enc"}, "key use"), ({"key_ops": ["encrypt"]}, "key use")],
    ids=["other-alg", "encryption-use", "encryption-ops"],
)
def test_key_meant_for_another_alg_or_use_is_rejected(
    service_factory: ServiceFactory, ehr: SigningEhr, caplog: pytest.LogCaptureFixture, change: dict[str, Any], code: str
) -> None:
    """req 180, req 182: a key's own `alg`, when given, must be the header's; its `use`, when given, `sig`."""
    caplog.set_level(logging.INFO, logger="cds_service.cds_hooks.auth")
    ec_key = {**ehr.jwks["keys"][0], **change}
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": {"keys": [ec_key]}}})
    assert_bare_401(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH))))
    assert rejection_reasons(caplog)[-1].startswith(code + ":"), rejection_reasons(caplog)


def test_key_without_alg_or_use_fits_by_type(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 182: `alg` and `use` are optional in a JWK; an EC P-384 key without them verifies ES384, an RSA key RS384 and PS256."""
    keys = [{k: v for k, v in key.items() if k not in ("alg", "use")} for key in ehr.jwks["keys"]]
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": {"keys": keys}}})
    for alg in ("ES384", "RS384", "PS256"):
        assert_ok(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH, alg=alg))))


def test_plain_http_jku_is_refused_at_verification_without_allow_http(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 198: key sets travel over TLS. Settings refuse plain-http key-set URLs at start; should one reach
    the verifier anyway while allow_http is false, it is refused there too, and never fetched."""
    jku_key = KeyPair.generate("jku-http")
    peer = jwks_peer({"jwks": {"keys": [jku_key.jwk]}})
    with peer.running():
        jku = peer.url + "/jwks.json"
        running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "jku_allowlist": [jku]}})
        authenticator = running.app.extensions["spine_cds"].authenticator
        token = jku_key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH), jku=jku)
        authenticator.allow_http = False
        assert_bare_401(DISCOVERY.send(running, bearer(token)))
        assert peer.requests == []
        authenticator.allow_http = True  # the development setting lets the same jku through
        assert_ok(DISCOVERY.send(running, bearer(token)))
        assert len(peer.requests) == 1


def test_plain_http_key_set_urls_stop_start_up_without_allow_http(ehr: SigningEhr) -> None:
    """req 198: the start-up half of the same rule."""
    for issuer in (
        {"jwks_url": "http://ehr.example.org/jwks.json"},
        {"jwks": ehr.jwks, "jku_allowlist": ["http://ehr.example.org/k"]},
    ):
        with pytest.raises(SettingsError, match="plain http"):
            load_settings({"trusted_issuers": {ehr.issuer: issuer}}, environ={})


# ---------------------------------------------------------------------------------------------
# The audience behind a proxy: SPINE_CDS_PUBLIC_BASE_URL
# ---------------------------------------------------------------------------------------------


def test_audience_uses_public_base_url(service_factory: ServiceFactory, ehr: SigningEhr) -> None:
    """req 196: behind a proxy, `aud` is the public URL of the endpoint, not the address the app listens on."""
    running = service_factory(public_base_url="https://cds.example.org/base")
    public = bearer(ehr.token("https://cds.example.org/base/cds-services"))
    assert_ok(DISCOVERY.send(running, public))
    assert_bare_401(DISCOVERY.send(running, bearer(ehr.token(running.base_url + DISCOVERY_PATH))))


# ---------------------------------------------------------------------------------------------
# Replay stores
# ---------------------------------------------------------------------------------------------


class StepClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replay_engine(database_url: str) -> Iterator[Engine]:
    """A migrated database (SQLite file or the session's PostgreSQL database) for the replay store."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _seen(engine: Engine, *keys: str) -> dict[str, float]:
    """The seen_tokens rows of these replay keys: {key: expires_at}."""
    digests = {hashlib.sha256(key.encode()).hexdigest(): key for key in keys}
    with engine.connect() as connection:
        rows = connection.execute(select(SeenToken.key, SeenToken.expires_at).where(SeenToken.key.in_(digests))).all()
    return {digests[row.key]: row.expires_at for row in rows}


def test_database_replay_store_remembers_jti_until_ttl(replay_engine: Engine) -> None:
    """req 192: a jti is usable once while it is remembered, and again once its memory has expired."""
    clock = StepClock()
    store = DatabaseReplayStore(replay_engine, clock=clock)
    run = uuid.uuid4().hex
    a, b = f"test-{run}|a", f"test-{run}|b"
    assert store.first_use(a, 60) is True
    assert store.first_use(a, 60) is False
    assert store.first_use(b, 60) is True
    clock.now += 59
    assert store.first_use(a, 60) is False
    clock.now += 2
    assert store.first_use(a, 60) is True
    assert store.first_use(a, 60) is False  # remembered afresh from this use
    assert _seen(replay_engine, a) == {a: clock.now + 60}


def test_database_replay_store_is_shared_between_instances(database_url: str, replay_engine: Engine) -> None:
    """req 192: every process on the database (gunicorn workers, hosts on PostgreSQL) shares the jti memory."""
    other_engine = make_engine(database_url)
    try:
        one, two = DatabaseReplayStore(replay_engine), DatabaseReplayStore(other_engine)
        run = uuid.uuid4().hex
        first, second = f"test-{run}|jti-1", f"test-{run}|jti-2"
        assert one.first_use(first, 60) is True
        assert two.first_use(first, 60) is False
        assert one.first_use(first, 60) is False
        assert two.first_use(second, 60) is True
        assert one.first_use(second, 60) is False
    finally:
        other_engine.dispose()


def test_database_replay_store_lets_one_of_racing_uses_through(database_url: str, replay_engine: Engine) -> None:
    """req 192: the same jti presented at once by many threads over two engines is a first use exactly once."""
    other_engine = make_engine(database_url)
    try:
        stores = [DatabaseReplayStore(replay_engine), DatabaseReplayStore(other_engine)]
        key = f"test-{uuid.uuid4().hex}|raced"
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(lambda n: stores[n % 2].first_use(key, 60), range(16)))
        assert outcomes.count(True) == 1, outcomes
    finally:
        other_engine.dispose()


def test_database_replay_store_keeps_digests_and_deletes_expired_rows(replay_engine: Engine) -> None:
    """req 192: rows are keyed by SHA-256 of `issuer|jti` (never the token, nor the jti in clear), and
    expired rows are deleted on a process's first call and every `cleanup_every` calls after."""
    clock = StepClock()
    store = DatabaseReplayStore(replay_engine, clock=clock, cleanup_every=2)
    run = uuid.uuid4().hex
    a, b, c = (f"https://ehr.example.org|test-{run}-{n}" for n in "abc")
    assert store.first_use(a, 60) is True  # the first call also cleans up
    clock.now += 61
    assert store.first_use(b, 60) is True
    assert set(_seen(replay_engine, a, b, c)) == {a, b}  # a has expired, but is still there
    assert store.first_use(c, 60) is True  # the next cleanup
    assert set(_seen(replay_engine, a, b, c)) == {b, c}
    with replay_engine.connect() as connection:
        keys = set(connection.execute(select(SeenToken.key)).scalars())
    assert {hashlib.sha256(k.encode()).hexdigest() for k in (b, c)} <= keys
    assert not [key for key in keys if run in key]


def test_replay_rejected_by_second_service_instance_sharing_the_database(
    service_factory: ServiceFactory, ehr: SigningEhr, database_url: str
) -> None:
    """req 192: without Redis the jti memory is the database, so a token replayed to another instance
    (or gunicorn worker) on the same database is refused."""
    public = "https://cds.example.org"
    first = service_factory(public_base_url=public, database_url=database_url)
    second = service_factory(public_base_url=public, database_url=database_url)
    token = bearer(ehr.token(public + DISCOVERY_PATH))
    assert_ok(DISCOVERY.send(first, token))
    assert_bare_401(DISCOVERY.send(second, token))
    assert_bare_401(DISCOVERY.send(first, token))


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """Redis db 15; a failure in CI when Redis is down, a skip elsewhere."""
    client = redis_client_or_skip(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def replay_keys(redis_client: redis.Redis) -> Iterator[list[str]]:
    """Replay-store keys a test used (unique to this run), deleted afterwards."""
    used: list[str] = []
    yield used
    if used:
        redis_client.delete(*(f"spine-cds:jti:{key}" for key in used))


def test_redis_replay_store_is_shared_between_instances(redis_client: redis.Redis, replay_keys: list[str]) -> None:
    """req 192: the jti memory in Redis is shared by every process and host using it."""
    run = uuid.uuid4().hex
    first, second = f"test-{run}|jti-1", f"test-{run}|jti-2"
    replay_keys.extend([first, second])
    other_client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        one, two = RedisReplayStore(redis_client), RedisReplayStore(other_client)
        assert one.first_use(first, 60) is True
        assert one.first_use(first, 60) is False
        assert two.first_use(first, 60) is False
        assert two.first_use(second, 60) is True
        assert one.first_use(second, 60) is False
        assert 0 < int(redis_client.ttl(f"spine-cds:jti:{first}")) <= 60
    finally:
        other_client.close()


def test_replay_rejected_by_second_service_instance_sharing_redis(
    service_factory: ServiceFactory, ehr: SigningEhr, redis_client: redis.Redis, replay_keys: list[str]
) -> None:
    """req 192: two instances behind one public URL share Redis, so a token replayed to the other is refused."""
    public = "https://cds.example.org"
    first = service_factory(public_base_url=public, redis_url=REDIS_URL)
    second = service_factory(public_base_url=public, redis_url=REDIS_URL)
    jti = f"test-{uuid.uuid4().hex}"
    replay_keys.append(f"{ehr.issuer}|{jti}")
    token = bearer(ehr.token(public + DISCOVERY_PATH, jti=jti))
    assert_ok(DISCOVERY.send(first, token))
    assert_bare_401(DISCOVERY.send(second, token))
    assert redis_client.exists(f"spine-cds:jti:{ehr.issuer}|{jti}") == 1


# ---------------------------------------------------------------------------------------------
# Tokens are never logged or stored
# ---------------------------------------------------------------------------------------------


def _stored_text(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            assert {"decisions", "feedback"} <= set(tables)
            rows = [
                " ".join(str(value) for value in row)
                for table in tables
                for row in connection.execute(text(f'SELECT * FROM "{table}"')).all()
            ]
    finally:
        engine.dispose()
    return "\n".join(rows)


def test_tokens_are_never_logged_or_stored(
    service_factory: ServiceFactory, ehr: SigningEhr, caplog: pytest.LogCaptureFixture
) -> None:
    """req 176: the JWTs (accepted and rejected) and the fhirAuthorization access token reach no log
    record and no decision-log row."""
    caplog.set_level(logging.DEBUG)
    access_token = f"fhir-access-{uuid.uuid4().hex}"
    fhir = FhirServer(generate("radiculopathy-knee-pain", seed=0, today=TODAY), token=access_token)
    with fhir.peer.running():
        issuer = {"jwks": ehr.jwks, "fhir_servers": [fhir.base]}  # the loopback FHIR server, listed
        running = service_factory(log_level="DEBUG", trusted_issuers={ehr.issuer: issuer})
        body = patient_view(prefetch=False)
        body["fhirServer"] = fhir.base
        body["fhirAuthorization"] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "spine-cds",
        }
        audience = running.base_url + SERVICE_PATH
        now = int(time.time())
        tokens = [
            ehr.token(audience, iat=now - 600, exp=now - 120),  # expired
            ehr.token(audience, iss="https://unknown-ehr.example.org"),
            ehr.token(audience),
        ]
        assert_bare_401(SERVICE_CALL.send(running, bearer(tokens[0]), body))
        assert_bare_401(SERVICE_CALL.send(running, bearer(tokens[1]), body))
        answer = SERVICE_CALL.send(running, bearer(tokens[2]), body)
        assert_ok(answer)
        assert fhir.peer.requests and all(r.headers["authorization"] == f"Bearer {access_token}" for r in fhir.peer.requests)

        card = answer.json()["cards"][0]["uuid"]
        feedback = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": datetime.now(UTC).isoformat()}]}
        feedback_tokens = [ehr.token(running.base_url + FEEDBACK_PATH) for _ in range(2)]
        assert_ok(FEEDBACK.send(running, bearer(feedback_tokens[0]), feedback))
        assert_bare_401(FEEDBACK.send(running, bearer(feedback_tokens[0]), feedback))  # replayed
        tokens += feedback_tokens[:1]

    secrets = [access_token, *tokens, *(token.rsplit(".", 1)[1] for token in tokens)]
    messages = [record.getMessage() + "\n" + (record.exc_text or "") for record in caplog.records]
    assert any(message.startswith("refused ") for message in messages), "the rejections were expected in the log"
    for secret in secrets:
        assert not [m for m in messages if secret in m]

    stored = _stored_text(running.app.extensions["spine_cds"].settings.effective_database_url)
    assert card in stored  # the rows were read
    for secret in secrets:
        assert secret not in stored


# ---------------------------------------------------------------------------------------------
# Oracle Health: the token's jku must be on the list of JKUs the issuer publishes
# ---------------------------------------------------------------------------------------------


def jku_list_peer(holder: dict[str, Any]) -> HttpPeer:
    """The issuer's key endpoint: `holder["list"]` at /jkus.json, `holder["jwks"]` at /jwks.json."""

    def handle(path: str, _query: dict[str, list[str]], _headers: dict[str, str]) -> tuple[int, Any]:
        if path == "/jkus.json":
            return holder.get("status", 200), holder["list"]
        if path == "/jwks.json":
            return 200, holder["jwks"]
        return 404, {"error": "not found"}

    return HttpPeer(handle)


@pytest.mark.parametrize("shape", ["object", "array"])
def test_a_jku_on_the_issuers_published_list_is_fetched_and_the_list_is_cached(
    service_factory: ServiceFactory, ehr: SigningEhr, shape: str
) -> None:
    key = KeyPair.generate("oracle-1")
    holder: dict[str, Any] = {"jwks": {"keys": [key.jwk]}}
    peer = jku_list_peer(holder)
    with peer.running():
        jku = peer.url + "/jwks.json"
        holder["list"] = {"jkus": [jku]} if shape == "object" else [jku]
        running = service_factory(trusted_issuers={ehr.issuer: {"profile": "oracle", "jku_list_url": peer.url + "/jkus.json"}})
        for _ in range(2):
            token = key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH), jku=jku)
            assert DISCOVERY.send(running, bearer(token)).status_code == 200
        assert [r.path for r in peer.requests] == ["/jkus.json", "/jwks.json"]


@pytest.mark.parametrize("published", [{"status": 503, "list": {}}, {"list": {"jkus": "not a list"}}, {"list": [1, 2]}])
def test_an_unavailable_or_unreadable_jku_list_refuses_the_token_without_fetching_the_jku(
    service_factory: ServiceFactory, ehr: SigningEhr, published: dict[str, Any]
) -> None:
    key = KeyPair.generate("oracle-1")
    holder: dict[str, Any] = {"jwks": {"keys": [key.jwk]}, **published}
    peer = jku_list_peer(holder)
    with peer.running():
        running = service_factory(trusted_issuers={ehr.issuer: {"profile": "oracle", "jku_list_url": peer.url + "/jkus.json"}})
        token = key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH), jku=peer.url + "/jwks.json")
        assert_bare_401(DISCOVERY.send(running, bearer(token)))
        assert [r.path for r in peer.requests] == ["/jkus.json"]


def test_a_token_without_jku_from_an_issuer_known_only_by_its_jku_list_is_refused(
    service_factory: ServiceFactory, ehr: SigningEhr
) -> None:
    key = KeyPair.generate("oracle-1")
    peer = jku_list_peer({"jwks": {"keys": [key.jwk]}, "list": []})
    with peer.running():
        running = service_factory(trusted_issuers={ehr.issuer: {"profile": "oracle", "jku_list_url": peer.url + "/jkus.json"}})
        token = key.sign(claims(ehr.issuer, running.base_url + DISCOVERY_PATH))
        assert_bare_401(DISCOVERY.send(running, bearer(token)))
        assert peer.requests == []


@pytest.mark.parametrize(("profile", "lifetime", "status"), [("epic", 900, 200), ("generic", 900, 401), ("epic", 1200, 401)])
def test_the_epic_profile_accepts_the_15_minute_tokens_epic_signs(
    service_factory: ServiceFactory, ehr: SigningEhr, profile: str, lifetime: int, status: int
) -> None:
    running = service_factory(trusted_issuers={ehr.issuer: {"jwks": ehr.jwks, "profile": profile}})
    now = int(time.time())
    token = ehr.token(running.base_url + DISCOVERY_PATH, alg="RS384", iat=now, nbf=now - 300, exp=now + lifetime)
    assert DISCOVERY.send(running, bearer(token)).status_code == status
