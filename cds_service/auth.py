"""Verifying the JWT an EHR signs for every call (CDS Hooks 2.0, "Trusting CDS Clients").

Only asymmetric algorithms are accepted; keys come from the issuer's configured JWKS (inline or by
URL) or from a `jku` the issuer's configuration allow-lists. Any failure answers a bare 401; the
reason goes to the log, the token never does.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
import orjson
from jwt import PyJWK

from cds_service.errors import Unauthorized
from cds_service.settings import Settings, TrustedIssuer

log = logging.getLogger(__name__)

ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_REFRESH_MIN_INTERVAL = 10.0  # seconds between refetches of one JWKS on unknown kids


@dataclass(frozen=True)
class Caller:
    issuer: str
    subject: str | None
    tenant: str | None
    jti: str


class ReplayStore(Protocol):
    def first_use(self, key: str, ttl_seconds: int) -> bool: ...


class MemoryReplayStore:
    """Per-process jti memory for the embedded default (one process, no Redis)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            expires = self._seen.get(key)
            if expires is not None and expires > now:
                return False
            self._seen[key] = now + ttl_seconds
            return True


class RedisReplayStore:
    """Shared jti memory across processes and hosts: SET NX EX."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        return bool(self._client.set(f"spine-cds:jti:{key}", b"1", nx=True, ex=ttl_seconds))


class KeySets:
    """JWKS by URL, cached, refetched (rate-limited) when a kid is unknown."""

    def __init__(self, cache_seconds: int, timeout: float = 3.0, client: httpx.Client | None = None) -> None:
        self._cache_seconds = cache_seconds
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _fetch(self, url: str) -> dict[str, Any]:
        response = self._client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWK Set")
        return data

    def key(self, url: str, kid: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(url)
        if cached and now - cached[0] < self._cache_seconds:
            found = _find(cached[1], kid)
            if found or now - cached[0] < _REFRESH_MIN_INTERVAL:
                return found
        jwks = self._fetch(url)
        with self._lock:
            self._cache[url] = (time.monotonic(), jwks)
        return _find(jwks, kid)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _segment(value: str) -> dict[str, Any]:
    if not _SEGMENT.fullmatch(value):
        raise ValueError("not base64url")
    decoded = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    if not isinstance(decoded, dict):
        raise ValueError("not a JSON object")
    return decoded


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: they only choose the issuer and key; jwt.decode then checks all."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    return _segment(parts[0]), _segment(parts[1])


def _find(jwks: dict[str, Any], kid: str) -> dict[str, Any] | None:
    for key in jwks.get("keys", []):
        if isinstance(key, dict) and key.get("kid") == kid:
            return key
    return None


class Authenticator:
    def __init__(self, settings: Settings, replay: ReplayStore, key_sets: KeySets) -> None:
        self.issuers: dict[str, TrustedIssuer] = dict(settings.trusted_issuers)
        self.leeway = settings.jwt_leeway_seconds
        self.jti_ttl = settings.jti_ttl_seconds
        self.replay = replay
        self.key_sets = key_sets
        self._keys: dict[tuple[str, bytes], PyJWK] = {}

    def verify(self, authorization: str | None, audience: str) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        # the scheme name is case-insensitive (RFC 7235)
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("no bearer token")
        token = token.strip()
        try:
            header, claims = _peek(token)
        except ValueError:
            raise Unauthorized("unreadable token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized(f"algorithm {alg!r} not accepted")
        issuer_name = claims.get("iss")
        issuer = self.issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if issuer is None or not isinstance(issuer_name, str):
            raise Unauthorized("issuer not trusted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("no kid in header")
        jwk = self._key(issuer, header, kid)
        try:
            verified = jwt.decode(
                token,
                self._prepared(jwk, alg),
                algorithms=[alg],
                audience=audience,
                issuer=issuer_name,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"token rejected ({type(exc).__name__}: {exc})") from None
        tenant = verified.get("tenant")
        if tenant is not None and issuer.tenants and tenant not in issuer.tenants:
            raise Unauthorized("tenant not configured for issuer")
        jti = str(verified["jti"])
        ttl = max(60, int(verified["exp"] - time.time()) + self.leeway, self.jti_ttl)
        if not self.replay.first_use(f"{issuer_name}|{jti}", ttl):
            raise Unauthorized("jti replayed")
        subject = verified.get("sub")
        return Caller(
            issuer_name, subject if isinstance(subject, str) else None, tenant if isinstance(tenant, str) else None, jti
        )

    def _prepared(self, jwk: dict[str, Any], alg: str) -> PyJWK:
        """The key object for a JWK, built once: a JWKS refresh that changes the key changes the cache key."""
        cache_key = (alg, orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS))
        prepared = self._keys.get(cache_key)
        if prepared is None:
            try:
                prepared = PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"unusable key ({type(exc).__name__})") from None
            if len(self._keys) >= 256:
                self._keys.clear()
            self._keys[cache_key] = prepared
        return prepared

    def _key(self, issuer: TrustedIssuer, header: dict[str, Any], kid: str) -> dict[str, Any]:
        jku = header.get("jku")
        if jku is not None and jku != issuer.jwks_url and jku not in issuer.jku_allowlist:
            raise Unauthorized("jku not allow-listed")
        url = jku or issuer.jwks_url
        if url is None:
            found = _find(issuer.jwks or {}, kid)
        else:
            try:
                found = self.key_sets.key(url, kid)
            except (httpx.HTTPError, ValueError) as exc:
                raise Unauthorized(f"JWKS unavailable ({type(exc).__name__})") from None
        if found is None:
            raise Unauthorized("unknown kid")
        return found
