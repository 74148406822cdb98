"""Verifying the JWT an EHR signs for every call (CDS Hooks 2.0, "Trusting CDS Clients").

Only asymmetric algorithms and keys are accepted: keys come from the issuer's configured JWKS (inline or
by URL) or from a `jku` the issuer's configuration allow-lists, and only EC and RSA keys that fit the
token's algorithm are ever used. The claims must have their JSON types, the token a short lifetime, the
`jti` a first use (remembered in Redis, or in the database without it). Any failure answers a bare 401;
the reason, which starts with a plain code ("expired", "audience", "claim types", "lifetime", "replay",
"tenant", "key type", ...), goes to the log; the token never does.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
from jwt import PyJWK
from sqlalchemy import Float, Insert, String, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from cds_service.cds_hooks.tables import SeenToken
from cds_service.database import DriverStatement
from cds_service.errors import Unauthorized
from cds_service.fallback import Breaker
from cds_service.settings import Settings, TrustedIssuer

log = logging.getLogger(__name__)

ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_REFRESH_MIN_INTERVAL = 10.0  # seconds between refetches of one JWKS on unknown kids
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
# the key type each algorithm family verifies with, and the curve each ES algorithm is defined on (RFC 7518)
_KEY_TYPE = {"ES": "EC", "RS": "RSA", "PS": "RSA"}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


@dataclass(frozen=True)
class Caller:
    issuer: str
    subject: str | None
    tenant: str | None
    jti: str


class ReplayStore(Protocol):
    def first_use(self, key: str, ttl_seconds: int) -> bool: ...


class RedisReplayStore:
    """Shared jti memory across processes and hosts: SET NX EX."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        return bool(self._client.set(f"spine-cds:jti:{key}", b"1", nx=True, ex=ttl_seconds))


class FallbackReplayStore:
    """Redis first, the database while Redis is unreachable: hook calls keep being answered through a Redis
    outage, and a jti first seen during it is remembered in the database. During an outage a jti that only
    Redis remembers is not seen; tokens live at most JWT_MAX_LIFETIME_SECONDS, which bounds that window.
    """

    def __init__(self, primary: ReplayStore, fallback: ReplayStore, breaker: Breaker | None = None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.breaker = breaker or Breaker("the jti memory")

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        if not self.breaker.open:
            try:
                return self.primary.first_use(key, ttl_seconds)
            except Exception as exc:  # any client error (connection refused, timeout, loading) means unreachable
                self.breaker.trip(exc)
        return self.fallback.first_use(key, ttl_seconds)


def _claim_statement(postgres: bool) -> Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE seen_tokens.expires_at < :now"""
    dialect_insert = postgresql.insert if postgres else sqlite.insert
    claim = dialect_insert(SeenToken).values(key=bindparam("key", type_=String), expires_at=bindparam("expires_at", type_=Float))
    return claim.on_conflict_do_update(
        index_elements=[SeenToken.key],
        set_={"expires_at": claim.excluded.expires_at},
        where=SeenToken.expires_at < bindparam("now", type_=Float),
    )


class DatabaseReplayStore:
    """Shared jti memory in the database (the SQLite file every gunicorn worker opens, or PostgreSQL),
    for deployments without Redis.

    One statement decides a first use: insert the key, or take over its row only when that row has
    expired; the database serialises racing callers on the primary key, so exactly one of them sees a
    row changed. Rows are keyed by SHA-256 of `issuer|jti`, never the token, and expired rows are
    deleted on the first call of each process and every `cleanup_every` calls after.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, cleanup_every: int = 200) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"no database replay store for {engine.dialect.name}")
        self._engine = engine
        self._claim = DriverStatement.of(_claim_statement(engine.dialect.name == "postgresql"), engine.dialect)
        self._clock = clock
        self._cleanup_every = max(1, cleanup_every)
        self._calls = itertools.count()

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        now = float(self._clock())
        digest = hashlib.sha256(key.encode()).hexdigest()
        # through the driver with the statement compiled once: on the path of every call, SQLAlchemy's
        # per-execution work was most of this write's cost (bench/README.md). On SQLite the one statement
        # commits on its own (the driver is in autocommit, see database.make_engine)
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                self._claim.execute(cursor, {"key": digest, "expires_at": now + ttl_seconds, "now": now})
                # one row inserted or taken over: a first use; none: the key is remembered
                first = cursor.rowcount == 1
            finally:
                cursor.close()
            connection.commit()
        finally:
            connection.close()
        if next(self._calls) % self._cleanup_every == 0:
            self.delete_expired(now)
        return first

    def delete_expired(self, now: float | None = None) -> int:
        """Delete the rows of tokens past their memory; failures are logged, the table only grows meanwhile."""
        cutoff = float(self._clock()) if now is None else now
        try:
            with self._engine.begin() as connection:
                return int(connection.execute(delete(SeenToken).where(SeenToken.expires_at < cutoff)).rowcount)
        except Exception:
            log.warning("could not delete expired rows of seen_tokens", exc_info=True)
            return 0


class KeySets:
    """JWKS by URL, cached, refetched (rate-limited) when a kid is unknown."""

    def __init__(self, cache_seconds: int, timeout: float = 3.0, client: httpx.Client | None = None) -> None:
        self._cache_seconds = cache_seconds
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lists: dict[str, tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def _fetch(self, url: str) -> dict[str, Any]:
        response = self._client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWK Set")
        return data

    def jku_list(self, url: str) -> list[str]:
        """The JKUs an issuer publishes as its own (Oracle Health): a JSON array of URLs, or an object
        whose `jkus` member is one; cached like a key set."""
        now = time.monotonic()
        with self._lock:
            cached = self._lists.get(url)
        if cached and now - cached[0] < self._cache_seconds:
            return cached[1]
        response = self._client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
        listed = data.get("jkus") if isinstance(data, dict) else data
        if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
            raise ValueError("not a list of JKUs")
        with self._lock:
            self._lists[url] = (time.monotonic(), listed)
        return listed

    def candidates(self, url: str, kid: str) -> list[dict[str, Any]]:
        """The keys of the set at `url` named `kid`, of any type (the caller chooses a usable one)."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(url)
        if cached and now - cached[0] < self._cache_seconds:
            found = _with_kid(cached[1], kid)
            if found or now - cached[0] < _REFRESH_MIN_INTERVAL:
                return found
        jwks = self._fetch(url)
        with self._lock:
            self._cache[url] = (time.monotonic(), jwks)
        return _with_kid(jwks, kid)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _segment(value: str) -> dict[str, Any]:
    if not _SEGMENT.fullmatch(value):
        raise ValueError("not base64url")
    # orjson is strict JSON: NaN, Infinity and integers beyond 64 bits are refused here
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


def _with_kid(jwks: dict[str, Any], kid: str) -> list[dict[str, Any]]:
    keys = jwks.get("keys")
    return [key for key in (keys if isinstance(keys, list) else []) if isinstance(key, dict) and key.get("kid") == kid]


def _key_problem(key: dict[str, Any], alg: str) -> str | None:
    """Why this JWK may not verify a token signed with `alg`; None when it may."""
    kty = key.get("kty")
    if kty not in ("EC", "RSA"):
        return f"key type: kty {kty!r} is not an asymmetric key (EC or RSA); symmetric keys are never used"
    if kty != _KEY_TYPE[alg[:2]]:
        return f"key type: an {kty} key cannot verify {alg}"
    if kty == "EC" and key.get("crv") != _CURVE[alg]:
        return f"key type: curve {key.get('crv')!r} does not fit {alg}"
    if "alg" in key and key["alg"] != alg:
        return f"key alg: the key is for {key['alg']!r}, the token says {alg}"
    if "use" in key and key["use"] != "sig":
        return f"key use: {key['use']!r}, not 'sig'"
    key_ops = key.get("key_ops")
    if key_ops is not None and not (isinstance(key_ops, list) and "verify" in key_ops):
        return "key use: key_ops does not include 'verify'"
    return None


def _usable_key(candidates: list[dict[str, Any]], alg: str) -> dict[str, Any]:
    if not candidates:
        raise Unauthorized("unknown kid")
    problems = []
    for key in candidates:
        problem = _key_problem(key, alg)
        if problem is None:
            return key
        problems.append(problem)
    raise Unauthorized(problems[0])


def _is_number(value: Any) -> bool:
    """A JSON number: int or finite float, never bool (a Python int) and never a numeric string; within
    the 64-bit range, so the arithmetic on it (exp - iat, the replay TTL) cannot overflow."""
    if type(value) is int:
        return abs(value) < 2**63
    return type(value) is float and math.isfinite(value) and abs(value) < 2**63


def _claims_problem(claims: dict[str, Any]) -> str | None:
    """Why the claims cannot be accepted whatever their values (absent or of the wrong JSON type); None if fine."""
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            return f"missing claim: {name!r}"
    wrong: list[str] = [name for name in ("exp", "iat", "nbf") if name in claims and not _is_number(claims[name])]
    wrong += [name for name in ("iss", "sub", "tenant") if name in claims and not isinstance(claims[name], str)]
    aud = claims["aud"]
    if not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
        wrong.append("aud")
    jti = claims["jti"]
    if not (isinstance(jti, str) and jti):
        wrong.append("jti")
    if wrong:
        return "claim types: " + ", ".join(wrong) + " not of the required JSON type (numbers; strings; jti non-empty)"
    return None


# the reason code for each PyJWT rejection, most specific first (InvalidSignatureError is a DecodeError)
_DECODE_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.MissingRequiredClaimError, "missing claim"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.DecodeError, "unreadable token"),
)


def _decode_reason(exc: jwt.PyJWTError) -> str:
    code = next((code for kind, code in _DECODE_REASONS if isinstance(exc, kind)), "token rejected")
    return f"{code} ({type(exc).__name__}: {exc})"


class Authenticator:
    def __init__(self, settings: Settings, replay: ReplayStore, key_sets: KeySets) -> None:
        self.issuers: dict[str, TrustedIssuer] = dict(settings.trusted_issuers)
        self.leeway = settings.jwt_leeway_seconds
        self.max_lifetime = settings.jwt_max_lifetime_seconds
        self.jti_ttl = settings.jti_ttl_seconds
        self.allow_http = settings.allow_http
        self.replay = replay
        self.key_sets = key_sets
        self._keys: dict[tuple[str, bytes], PyJWK] = {}

    def verify(self, authorization: str | None, audience: str) -> Caller:
        """The verified caller; Unauthorized (with the issuer the token claims, if readable) otherwise."""
        try:
            return self._verify(authorization, audience)
        except Unauthorized as refused:
            refused.claimed_issuer = _claimed_issuer(authorization)
            raise

    def _verify(self, authorization: str | None, audience: str) -> Caller:
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
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise Unauthorized(f"algorithm: {str(alg)[:40]!r} not accepted")
        # checked before PyJWT sees the claims: it takes numeric strings for numbers
        problem = _claims_problem(claims)
        if problem:
            raise Unauthorized(problem)
        issuer_name: str = claims["iss"]
        issuer = self.issuers.get(issuer_name)
        if issuer is None:
            raise Unauthorized("issuer: not trusted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("kid: none in header")
        jwk = self._key(issuer, header, kid, alg)
        try:
            verified = jwt.decode(
                token,
                self._prepared(jwk, alg),
                algorithms=[alg],
                audience=audience,
                issuer=issuer_name,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_decode_reason(exc)) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise Unauthorized(f"unreadable token ({type(exc).__name__})") from None
        # `verified` is the payload `_claims_problem` already checked: the signature covers those very bytes
        lifetime = verified["exp"] - verified["iat"]
        max_lifetime = issuer.max_lifetime(self.max_lifetime)
        if lifetime > max_lifetime + self.leeway:
            raise Unauthorized(f"lifetime: exp - iat is {lifetime:.0f} s, above {max_lifetime} s (+{self.leeway} s leeway)")
        tenant: str | None = verified.get("tenant")
        if issuer.tenants and tenant is None:
            raise Unauthorized("tenant: none in a token of an issuer restricted to tenants")
        if issuer.tenants and tenant not in issuer.tenants:
            raise Unauthorized("tenant: not configured for the issuer")
        jti: str = verified["jti"]
        ttl = max(60, int(verified["exp"] - time.time()) + self.leeway, self.jti_ttl)
        if not self.replay.first_use(f"{issuer_name}|{jti}", ttl):
            raise Unauthorized("replay: jti already used")
        return Caller(issuer_name, verified.get("sub"), tenant, jti)

    def _prepared(self, jwk: dict[str, Any], alg: str) -> PyJWK:
        """The key object for a JWK, built once: a JWKS refresh that changes the key changes the cache key."""
        try:
            cache_key = (alg, orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS))
        except orjson.JSONEncodeError:  # a fetched key with a member orjson cannot write (an integer beyond 64 bits)
            raise Unauthorized("key type: unusable key (not plain JSON)") from None
        prepared = self._keys.get(cache_key)
        if prepared is None:
            try:
                prepared = PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"key type: unusable key ({type(exc).__name__})") from None
            if len(self._keys) >= 256:
                self._keys.clear()
            self._keys[cache_key] = prepared
        return prepared

    def _key(self, issuer: TrustedIssuer, header: dict[str, Any], kid: str, alg: str) -> dict[str, Any]:
        """The one asymmetric key of the issuer's key set that may verify this token.

        Keys pinned inline come first: a token whose kid they hold is verified with them and its `jku`
        (which some clients, the CDS Hooks Sandbox among them, always send) is never fetched. Otherwise
        the `jku`, when the issuer allow-lists it (or lists it at its `jku_list_url`, as Oracle Health
        publishes its JKUs), or the issuer's `jwks_url`."""
        pinned = _with_kid(issuer.jwks or {}, kid)
        if pinned:
            return _usable_key(pinned, alg)
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or not self._jku_allowed(issuer, jku)):
            raise Unauthorized("jku: not allow-listed for the issuer")
        url = jku or issuer.jwks_url
        if url is None:
            return _usable_key(_with_kid(issuer.jwks or {}, kid), alg)
        if urlsplit(url).scheme.lower() != "https" and not self.allow_http:
            raise Unauthorized("jku: key-set URL is not https")
        try:
            candidates = self.key_sets.candidates(url, kid)
        except (httpx.HTTPError, ValueError) as exc:
            raise Unauthorized(f"key set unavailable ({type(exc).__name__})") from None
        return _usable_key(candidates, alg)

    def _jku_allowed(self, issuer: TrustedIssuer, jku: str) -> bool:
        """The issuer's own key-set URL, an allow-listed one, or one on the list the issuer publishes."""
        if jku == issuer.jwks_url or jku in issuer.jku_allowlist:
            return True
        if issuer.jku_list_url is None:
            return False
        try:
            return jku in self.key_sets.jku_list(issuer.jku_list_url)
        except (httpx.HTTPError, ValueError) as exc:
            raise Unauthorized(f"jku list unavailable ({type(exc).__name__})") from None


def _claimed_issuer(authorization: str | None) -> str | None:
    _, _, token = (authorization or "").partition(" ")
    try:
        _, claims = _peek(token.strip())
    except ValueError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None
