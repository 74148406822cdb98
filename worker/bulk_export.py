"""A FHIR Bulk Data Access (v2) client authorised by SMART Backend Services. No Celery here.

1. token: a `client_assertion` JWT signed with the client's private key (RS384 or ES384) is exchanged
   at the token endpoint (found in `{base}/.well-known/smart-configuration` unless given) for a bearer
   token, cached until shortly before it expires. Tokens are never logged nor put in messages.
2. kick-off: `GET {base}/$export` or `{base}/Group/{id}/$export` with `Prefer: respond-async`; the
   202 answer's Content-Location is the status URL.
3. poll: the status URL answers 202 while the export runs (Retry-After is honoured, else the wait
   doubles from 1 s up to 60 s) and 200 with the manifest when it is complete; 429 and 5xx are
   transient, any other error is final.
4. download: every output file is streamed to `<Type>.<n>.ndjson` (`.ndjson.gz` when the file itself
   is gzipped) through a temporary name, so a file that exists is complete and is not fetched again;
   the manifest's error files go to `errors/` and are counted, not treated as a failure.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hooks.fhir import RECORD_TYPES

log = logging.getLogger(__name__)

EXPORT_TYPES: tuple[str, ...] = tuple(RECORD_TYPES)  # what the assessment reads, nothing more
DEFAULT_SCOPE = " ".join(f"system/{t}.read" for t in EXPORT_TYPES)
SMART_V2_SCOPE = " ".join(f"system/{t}.rs" for t in EXPORT_TYPES)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FHIR_JSON = "application/fhir+json"

MAX_WAIT = 60.0  # seconds between polls at most, whatever the server asks
ASSERTION_LIFETIME = 300  # the SMART ceiling for a client assertion's exp
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# a kick-off is only repeated when the server said it did not start one
KICKOFF_RETRY_STATUSES = frozenset({429, 503})
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)

SigningKeyType = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class BulkExportError(RuntimeError):
    """The export cannot go on; the message says why and never holds a token."""


class TokenError(BulkExportError):
    """The token endpoint refused the client."""


class NetworkError(BulkExportError):
    """A server could not be reached (after retries): transient for a caller that polls again later."""


# -- waiting --------------------------------------------------------------------------------------


def backoff(attempt: int, cap: float = MAX_WAIT) -> float:
    """1, 2, 4, ... seconds, capped."""
    return float(min(cap, 2.0 ** min(max(attempt, 0), 16)))


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP-date); None when absent or unreadable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def next_wait(response: httpx.Response | None, attempt: int, cap: float = MAX_WAIT) -> float:
    """The server's Retry-After when it gives one, else exponential backoff; never more than `cap`."""
    asked = retry_after(response.headers.get("retry-after")) if response is not None else None
    return min(cap, asked if asked is not None else backoff(attempt, cap))


# -- messages -------------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """A URL fit for logs and messages: no query string (signed file URLs carry credentials there)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def outcome_message(response: httpx.Response) -> str:
    """`HTTP 500: <diagnostics>` from an OperationOutcome, an OAuth error or the first bytes of the body."""
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    detail = ""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
            if text:
                parts.append(str(text))
        detail = "; ".join(parts)
    elif isinstance(body, dict) and "error" in body:
        detail = str(body["error"]) + (f": {body['error_description']}" if body.get("error_description") else "")
    elif response.text.strip():
        detail = response.text.strip()[:200]
    return f"HTTP {response.status_code}" + (f": {detail[:500]}" if detail else "")


# -- the client's key and its assertion --------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    key: SigningKeyType
    alg: str
    kid: str


def _thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint, the key id when none is given."""
    members = ("crv", "kty", "x", "y") if public_jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: public_jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _signing_key(key: object, kid: str | None, source: Path) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise BulkExportError(f"{source}: RSA keys must have at least 2048 bits")
        public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return SigningKey(key, "RS384", kid or _thumbprint(public))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise BulkExportError(f"{source}: ES384 needs a P-384 key, not {key.curve.name}")
        public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return SigningKey(key, "ES384", kid or _thumbprint(public))
    raise BulkExportError(f"{source}: not an RSA or EC private key")


def load_signing_key(path: Path, kid: str | None = None) -> SigningKey:
    """An RSA (RS384) or P-384 (ES384) private key from a PEM file or a JWK / JWK Set file.

    The key id is `kid`, else the JWK's own `kid`, else the key's RFC 7638 thumbprint.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BulkExportError(f"cannot read the private key {path}: {exc.strerror}") from exc
    if data.lstrip().startswith(b"{"):
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise BulkExportError(f"{path}: not a JSON Web Key ({exc})") from exc
        jwks = parsed.get("keys") if isinstance(parsed, dict) else None
        candidates = jwks if isinstance(jwks, list) else [parsed]
        private = [k for k in candidates if isinstance(k, dict) and "d" in k]
        if not private:
            raise BulkExportError(f"{path}: the JWK holds no private key (no 'd')")
        jwk_data = private[0]
        try:
            loaded = jwt.PyJWK(jwk_data).key
        except (jwt.PyJWKError, ValueError, TypeError) as exc:
            raise BulkExportError(f"{path}: unusable JWK ({exc})") from exc
        return _signing_key(loaded, kid or jwk_data.get("kid"), path)
    try:
        pem_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BulkExportError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    return _signing_key(pem_key, kid, path)


def client_assertion(client_id: str, token_url: str, key: SigningKey, jku: str | None = None, now: float | None = None) -> str:
    """The signed JWT a SMART Backend Services client authenticates with (short-lived, single use)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "jti": str(uuid.uuid4()),
    }
    headers: dict[str, Any] = {"kid": key.kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    return jwt.encode(claims, key.key, algorithm=key.alg, headers=headers)


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    key: SigningKey
    scope: str = DEFAULT_SCOPE
    token_url: str | None = None
    jku: str | None = None


class TokenCache:
    """Bearer tokens by (token endpoint, client, scope), kept until shortly before they expire, and
    the token endpoints discovered by FHIR base."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.endpoints: dict[str, str] = {}

    def get(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            found = self._tokens.get(key)
            if found is None or time.monotonic() >= found[1]:
                self._tokens.pop(key, None)
                return None
            return found[0]

    def put(self, key: tuple[str, str, str], token: str, expires_in: float) -> None:
        # renewed a little early: 30 s before, or a fifth of the lifetime for short-lived tokens
        margin = min(30.0, expires_in / 5)
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(0.0, expires_in - margin))

    def drop(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
            self.endpoints.clear()


TOKENS = TokenCache()  # one per process: a worker polling every minute asks for a token once per lifetime


# -- the export's parameters, as stored with a job -------------------------------------------------


@dataclass(frozen=True)
class ExportSpec:
    """What a job exports from where; the private key stays a file path, never its contents."""

    fhir: str
    client_id: str
    key_path: str
    group: str | None = None
    kid: str | None = None
    jku: str | None = None
    token_url: str | None = None
    scope: str = DEFAULT_SCOPE
    types: tuple[str, ...] = EXPORT_TYPES
    status_url: str | None = None  # set once kicked off: a restarted job polls instead of exporting again
    kicked_off_at: float | None = None  # epoch seconds

    def to_json(self) -> str:
        values = {k: v for k, v in asdict(self).items() if v is not None}
        values["types"] = list(self.types)
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ExportSpec:
        try:
            values = json.loads(text)
            values["types"] = tuple(values.get("types") or EXPORT_TYPES)
            return cls(**values)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BulkExportError(f"the job's export parameters are unreadable ({exc})") from exc

    def credentials(self) -> ClientCredentials:
        return ClientCredentials(
            client_id=self.client_id,
            key=load_signing_key(Path(self.key_path), self.kid),
            scope=self.scope,
            token_url=self.token_url,
            jku=self.jku,
        )


# -- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True)
class Manifest:
    transaction_time: str
    request: str
    requires_access_token: bool
    output: tuple[ManifestFile, ...]
    error: tuple[ManifestFile, ...]

    @classmethod
    def parse(cls, body: Any, status_url: str) -> Manifest:
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise BulkExportError(f"the export at {safe_url(status_url)} completed without a manifest 'output' list")
        return cls(
            transaction_time=str(body.get("transactionTime", "")),
            request=str(body.get("request", "")),
            requires_access_token=bool(body.get("requiresAccessToken", False)),
            output=cls._files(body["output"], status_url),
            error=cls._files(body.get("error") or [], status_url),
        )

    @staticmethod
    def _files(items: list[Any], status_url: str) -> tuple[ManifestFile, ...]:
        files = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise BulkExportError(f"a manifest entry has no 'url': {str(item)[:200]}")
            url = urljoin(status_url, item["url"])
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise BulkExportError(f"a manifest file URL is not http(s): {safe_url(url)}")
            kind = "".join(ch for ch in str(item.get("type") or "Unknown") if ch.isalnum()) or "Unknown"
            count = item.get("count")
            files.append(ManifestFile(kind, url, count if isinstance(count, int) else None))
        return tuple(files)


@dataclass(frozen=True)
class Pending:
    """The export is still running (or the server failed transiently): poll again after `wait` seconds."""

    wait: float
    progress: str | None = None
    transient: str | None = None  # why the poll failed, when it did


@dataclass(frozen=True)
class Downloaded:
    files: list[Path]
    error_files: list[Path]
    errors: int  # OperationOutcome lines in the error files
    counts: dict[str, int] = field(default_factory=dict)  # files by resource type


# -- the client ---------------------------------------------------------------------------------


class BulkClient:
    """Kick-off, polling and download against one FHIR server, with a cached SMART backend token."""

    def __init__(
        self,
        base: str,
        credentials: ClientCredentials | None,
        *,
        http: httpx.Client | None = None,
        retries: int = 4,
        max_wait: float = MAX_WAIT,
        sleep: Callable[[float], None] = time.sleep,
        tokens: TokenCache = TOKENS,
    ) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BulkExportError(f"the FHIR base must be an absolute http(s) URL, not {base!r}")
        self.base = base.rstrip("/")
        self.credentials = credentials
        self.http = http or httpx.Client(timeout=TIMEOUT, headers={"User-Agent": "spine-cds-bulk/1"})
        self.retries = retries
        self.max_wait = max_wait
        self.sleep = sleep
        self.tokens = tokens
        self._token_url = credentials.token_url if credentials else None

    @classmethod
    def from_spec(cls, spec: ExportSpec, **kwargs: Any) -> BulkClient:
        return cls(spec.fhir, spec.credentials(), **kwargs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- token ---------------------------------------------------------------------------------

    def token_url(self) -> str:
        """The token endpoint: given, or read from the server's SMART configuration."""
        if self._token_url:
            return self._token_url
        if found := self.tokens.endpoints.get(self.base):
            return found
        url = f"{self.base}/.well-known/smart-configuration"
        response = self._send("GET", url, auth=False, headers={"Accept": "application/json"}, retry_on=TRANSIENT_STATUSES)
        if response.status_code != 200:
            raise TokenError(f"cannot discover the token endpoint at {url}: {outcome_message(response)}")
        try:
            endpoint = response.json().get("token_endpoint")
        except (ValueError, AttributeError):
            endpoint = None
        if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
            raise TokenError(f"{url} names no http(s) token_endpoint")
        self.tokens.endpoints[self.base] = endpoint
        return endpoint

    def _cache_key(self) -> tuple[str, str, str]:
        assert self.credentials is not None
        return (self.token_url(), self.credentials.client_id, self.credentials.scope)

    def token(self, *, renew: bool = False) -> str:
        """A bearer token for the client, from the cache unless `renew`."""
        if self.credentials is None:
            raise TokenError("no client credentials to ask for a token with")
        key = self._cache_key()
        if not renew and (cached := self.tokens.get(key)):
            return cached
        self.tokens.drop(key)
        token, expires_in = self._request_token(key[0], self.credentials)
        self.tokens.put(key, token, expires_in)
        return token

    def _request_token(self, token_url: str, credentials: ClientCredentials) -> tuple[str, float]:
        def form() -> dict[str, str]:  # a fresh assertion (and jti) for every attempt
            return {
                "grant_type": "client_credentials",
                "scope": credentials.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(credentials.client_id, token_url, credentials.key, credentials.jku),
            }

        response = self._send(
            "POST", token_url, auth=False, form=form, headers={"Accept": "application/json"}, retry_on=TRANSIENT_STATUSES
        )
        if response.status_code != 200:
            raise TokenError(
                f"the token endpoint {safe_url(token_url)} refused client {credentials.client_id!r}: {outcome_message(response)}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise TokenError(f"the token endpoint {safe_url(token_url)} answered no JSON") from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"the token endpoint {safe_url(token_url)} answered no access_token")
        if str(body.get("token_type", "")).lower() != "bearer":
            raise TokenError(f"the token endpoint {safe_url(token_url)} answered a non-bearer token type")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        log.info("token for client %s from %s, valid %.0f s", credentials.client_id, safe_url(token_url), lifetime)
        return token, lifetime

    # -- requests --------------------------------------------------------------------------------

    def _headers(self, headers: Mapping[str, str] | None, auth: bool, renew: bool = False) -> dict[str, str]:
        out = dict(headers or {})
        if auth and self.credentials is not None:
            out["Authorization"] = f"Bearer {self.token(renew=renew)}"
        return out

    def _send(
        self,
        method: str,
        url: str,
        *,
        auth: bool = True,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        form: Callable[[], dict[str, str]] | None = None,
        retry_on: frozenset[int] = frozenset(),
        retries: int | None = None,
    ) -> httpx.Response:
        """One request; a 401 renews the token once; `retry_on` statuses and network errors are retried with backoff."""
        limit = self.retries if retries is None else retries
        attempt, renewed = 0, False
        while True:
            try:
                response = self.http.request(
                    method, url, headers=self._headers(headers, auth, renew=renewed), params=params, data=form() if form else None
                )
            except httpx.TransportError as exc:
                if attempt >= limit:
                    raise NetworkError(f"{method} {safe_url(url)} failed: {type(exc).__name__}: {exc}") from exc
                self.sleep(backoff(attempt, self.max_wait))
                attempt += 1
                continue
            if response.status_code == 401 and auth and self.credentials is not None and not renewed:
                renewed = True  # the cached token may have been revoked or expired early
                continue
            if response.status_code in retry_on and attempt < limit:
                log.info("%s %s answered %s; retrying", method, safe_url(url), response.status_code)
                self.sleep(next_wait(response, attempt, self.max_wait))
                attempt += 1
                continue
            return response

    # -- the export ------------------------------------------------------------------------------

    def kickoff(self, group: str | None = None, types: tuple[str, ...] = EXPORT_TYPES) -> str:
        """Start a system or Group export; the status URL to poll."""
        url = f"{self.base}/Group/{quote(group, safe='')}/$export" if group else f"{self.base}/$export"
        response = self._send(
            "GET",
            url,
            headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
            params={"_type": ",".join(types)},
            retry_on=KICKOFF_RETRY_STATUSES,
        )
        if response.status_code != 202:
            raise BulkExportError(f"the export kick-off at {url} failed: {outcome_message(response)}")
        location: str | None = response.headers.get("content-location")
        if not location:
            raise BulkExportError(f"the export kick-off at {url} answered 202 without a Content-Location")
        status_url = urljoin(url, location)
        if urlsplit(status_url).scheme not in ("http", "https"):
            raise BulkExportError(f"the export status URL is not http(s): {safe_url(status_url)}")
        log.info("export kicked off at %s; status at %s", url, safe_url(status_url))
        return status_url

    def poll(self, status_url: str, attempt: int = 0) -> Pending | Manifest:
        """Ask once how the export is going. `attempt` counts earlier polls, for the backoff."""
        try:
            response = self._send("GET", status_url, headers={"Accept": "application/json"}, retries=0)
        except NetworkError as exc:  # transient: the caller decides how often to try again
            return Pending(backoff(attempt, self.max_wait), transient=str(exc))
        if response.status_code == 202:
            return Pending(next_wait(response, attempt, self.max_wait), progress=response.headers.get("x-progress"))
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError as exc:
                raise BulkExportError(f"the export status at {safe_url(status_url)} answered 200 without JSON") from exc
            return Manifest.parse(body, status_url)
        if response.status_code in TRANSIENT_STATUSES:
            return Pending(next_wait(response, attempt, self.max_wait), transient=outcome_message(response))
        raise BulkExportError(f"the export at {safe_url(status_url)} failed: {outcome_message(response)}")

    def wait(self, status_url: str, *, max_transient: int = 5, deadline: float | None = None) -> Manifest:
        """Poll until complete (for callers without a task queue); `deadline` is a time.monotonic() value."""
        attempt = transient = 0
        while True:
            result = self.poll(status_url, attempt)
            if isinstance(result, Manifest):
                return result
            transient = transient + 1 if result.transient else 0
            if transient > max_transient:
                raise BulkExportError(f"the export status kept failing: {result.transient}")
            if deadline is not None and time.monotonic() + result.wait > deadline:
                raise BulkExportError("the export did not complete in time")
            self.sleep(result.wait)
            attempt += 1

    def download(self, manifest: Manifest, out: Path) -> Downloaded:
        """Every output file to `out`, every error file to `out/errors`; files already there are kept."""
        auth = manifest.requires_access_token
        if auth and urlsplit(self.base).scheme == "https":
            plain = [f for f in (*manifest.output, *manifest.error) if urlsplit(f.url).scheme != "https"]
            if plain:
                raise BulkExportError(f"refusing to send the token over plain http to {safe_url(plain[0].url)}")
        files = self._download_all(manifest.output, out, auth)
        error_files = self._download_all(manifest.error, out / "errors", auth)
        counts: dict[str, int] = {}
        for item in manifest.output:
            counts[item.type] = counts.get(item.type, 0) + 1
        return Downloaded(files, error_files, sum(_count_lines(p) for p in error_files), counts)

    def _download_all(self, items: tuple[ManifestFile, ...], out: Path, auth: bool) -> list[Path]:
        if not items:
            return []
        out.mkdir(parents=True, exist_ok=True)
        numbers: dict[str, int] = {}
        paths = []
        for item in items:
            numbers[item.type] = numbers.get(item.type, 0) + 1
            paths.append(self.download_file(item.url, out / f"{item.type}.{numbers[item.type]}", auth))
        return paths

    def download_file(self, url: str, stem: Path, auth: bool) -> Path:
        """Stream `url` to `stem.ndjson` (or `stem.ndjson.gz` when the content is gzipped); kept if already there."""
        for suffix in (".ndjson", ".ndjson.gz"):
            done = stem.with_name(stem.name + suffix)
            if done.exists():
                return done
        partial = stem.with_name(f"{stem.name}.part-{uuid.uuid4().hex}")  # no .ndjson ending: never read as data
        attempt, renewed = 0, False
        try:
            while True:
                try:
                    with self.http.stream(
                        "GET",
                        url,
                        headers=self._headers({"Accept": "application/fhir+ndjson"}, auth, renewed),
                        follow_redirects=True,
                    ) as response:
                        if response.status_code == 200:
                            gzipped = _save(response.iter_bytes(1 << 16), partial)
                            break
                        response.read()
                except httpx.TransportError as exc:
                    if attempt >= self.retries:
                        raise NetworkError(f"downloading {safe_url(url)} failed: {type(exc).__name__}: {exc}") from exc
                    self.sleep(backoff(attempt, self.max_wait))
                    attempt += 1
                    continue
                if response.status_code == 401 and auth and not renewed:
                    renewed = True
                    continue
                if response.status_code in TRANSIENT_STATUSES and attempt < self.retries:
                    self.sleep(next_wait(response, attempt, self.max_wait))
                    attempt += 1
                    continue
                raise BulkExportError(f"downloading {safe_url(url)} failed: {outcome_message(response)}")
            final = stem.with_name(stem.name + (".ndjson.gz" if gzipped else ".ndjson"))
            partial.replace(final)
            log.info("downloaded %s to %s", safe_url(url), final.name)
            return final
        finally:
            partial.unlink(missing_ok=True)

    def delete(self, status_url: str) -> bool:
        """Tell the server the files may go (best effort)."""
        try:
            response = self._send("DELETE", status_url, headers={"Accept": "application/json"})
        except BulkExportError:
            return False
        return response.status_code < 300


def _save(chunks: Iterator[bytes], path: Path) -> bool:
    """Write the (content-decoded) stream to `path`; True when the payload itself is gzip."""
    gzipped: bool | None = None
    with path.open("wb") as out:
        for chunk in chunks:
            if gzipped is None and chunk:
                gzipped = chunk[:2] == b"\x1f\x8b"
            out.write(chunk)
    return bool(gzipped)


def _count_lines(path: Path) -> int:
    with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def describe(manifest: Manifest, downloaded: Downloaded, spec: ExportSpec) -> dict[str, Any]:
    """What was exported, for the job's folder (no token, no key, no file URLs)."""
    return {
        "fhir": spec.fhir,
        "group": spec.group,
        "client_id": spec.client_id,
        "scope": spec.scope,
        "transactionTime": manifest.transaction_time,
        "request": manifest.request,
        "files": [p.name for p in downloaded.files],
        "files_by_type": downloaded.counts,
        "error_files": [p.name for p in downloaded.error_files],
        "errors": downloaded.errors,
    }
