"""One settings source for the web service, the CLI and the workers.

Precedence: embedded defaults, then an optional file (JSON, YAML or TOML) named by
``SPINE_CDS_SETTINGS_FILE`` or passed explicitly, then environment variables ``SPINE_CDS_<KEY>``
whose values are parsed as JSON when they parse (``SPINE_CDS_SNOOZE_DAYS=30``,
``SPINE_CDS_SNOOZE_DAYS_BY_REASON='{"accepted": 0}'``) and taken as plain strings otherwise.
Everything is validated at start; a bad value stops start-up with a message that names the key.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hooks.cards import OVERRIDE_REASONS, DetailFormat
from hooks.model import ModelConfigError, load_model
from hooks.services import DEFAULT_ENABLED, SERVICES_BY_ID

Profile = Literal["generic", "epic", "oracle"]
# the token lifetime each EHR's published examples use, where it is longer than JWT_MAX_LIFETIME_SECONDS:
# Epic signs for 15 minutes (exp - iat = 900 s in its CDS Hooks documentation)
PROFILE_TOKEN_LIFETIME: dict[str, int] = {"epic": 900}

ENV_PREFIX = "SPINE_CDS_"

# the feedback a snooze duration can be set for: each override reason the cards offer, and `accepted`
SNOOZE_KEYS: tuple[str, ...] = (*(reason["code"] for reason in OVERRIDE_REASONS), "accepted")
# days a snooze lasts where it differs from `snooze_days`: a confirmed knee cause holds longer; an
# accepted suggestion drafted a spine referral, which the model suppresses the card for 180 days after
DEFAULT_SNOOZE_DAYS_BY_REASON: dict[str, int] = {"knee-cause-confirmed": 365, "accepted": 180}


class SettingsError(ValueError):
    """The configuration cannot be used; the message names the key."""


def _absolute_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an absolute http(s) URL")
    return value


class OrderCoding(BaseModel):
    """A coding of the site's own orderable (Epic: the preference-list system) for the drafted referral."""

    model_config = ConfigDict(extra="forbid")

    system: Annotated[str, Field(min_length=1, max_length=500)]
    code: Annotated[str, Field(min_length=1, max_length=200)]
    display: Annotated[str, Field(min_length=1, max_length=500)] | None = None


class TrustedIssuer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the EHR behind the issuer: what its client needs from tokens and cards (docs/ehr-integration.md)
    profile: Profile = "generic"
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    jku_allowlist: list[str] = Field(default_factory=list)
    # Oracle Health: a URL publishing the list of JKUs the issuer signs with; a token's jku must be on it
    jku_list_url: str | None = None
    # the longest exp - iat accepted from this issuer; default per profile, else JWT_MAX_LIFETIME_SECONDS
    jwt_max_lifetime_seconds: int | None = Field(None, ge=30, le=3600)
    # card shape for this issuer's client
    detail_format: DetailFormat = "markdown"
    order_codings: list[OrderCoding] = Field(default_factory=list)
    # URL prefixes the client lets links go to (Oracle removes the others); empty: any
    link_allowlist: list[str] = Field(default_factory=list)
    # a systemAction noting the assessment on a drafted knee order (order-select, order-sign)
    annotate_orders: bool = False
    tenants: list[str] = Field(default_factory=list)
    # URL prefixes of the FHIR servers this issuer's calls may name as fhirServer; the service sends the
    # issuer's access tokens nowhere else. Empty: any public address (never loopback, link-local, metadata)
    fhir_servers: list[str] = Field(default_factory=list)

    @field_validator("jwks_url", "jku_list_url")
    @classmethod
    def _jwks_url_is_absolute(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_http_url(value)

    @field_validator("jku_allowlist", "fhir_servers", "link_allowlist")
    @classmethod
    def _urls_are_absolute(cls, values: list[str]) -> list[str]:
        return [_absolute_http_url(v) for v in values]

    def plain_http_urls(self) -> list[str]:
        """The configured URLs that would travel without TLS."""
        urls = [self.jwks_url or "", self.jku_list_url or "", *self.jku_allowlist, *self.fhir_servers]
        return [u for u in urls if u.startswith("http://")]

    def max_lifetime(self, default: int) -> int:
        return self.jwt_max_lifetime_seconds or PROFILE_TOKEN_LIFETIME.get(self.profile, default)

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedIssuer:
        if (self.jwks_url is None) == (self.jwks is None) and not (self.jku_list_url and self.jwks is None):
            raise ValueError("give exactly one of 'jwks_url' or 'jwks' (or 'jku_list_url' alone)")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError("'jwks' must be a JSON Web Key Set with a 'keys' list")
        return self

    @model_validator(mode="after")
    def _no_symmetric_keys(self) -> TrustedIssuer:
        # CDS Hooks: EHR JWTs SHALL NOT be signed with symmetric algorithms; a shared secret has no place here
        keys = (self.jwks or {}).get("keys")
        for key in keys if isinstance(keys, list) else []:
            if isinstance(key, dict) and key.get("kty") == "oct":
                raise ValueError(
                    f"'jwks' holds a symmetric key (kty 'oct', kid {key.get('kid')!r}); "
                    "CDS Hooks forbids symmetric JWT signatures: list the EHR's public EC or RSA keys only"
                )
        return self


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_path: Path = Path("instance")
    database_url: str | None = None
    redis_url: str | None = None
    public_base_url: str | None = None
    trusted_issuers: dict[str, TrustedIssuer] = Field(default_factory=dict)
    jwt_leeway_seconds: int = Field(60, ge=0, le=600)
    # the longest exp - iat accepted (beyond the leeway): EHR tokens are for one call, minutes at most
    jwt_max_lifetime_seconds: int = Field(300, ge=30, le=3600)
    # plain-http FHIR servers and key-set URLs, for development against local peers only: production
    # traffic carries bearer tokens and keys, which CDS Hooks requires over TLS
    allow_http: bool = False
    jti_ttl_seconds: int = Field(3600, ge=60)
    jwks_cache_seconds: int = Field(600, ge=0)
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    # feedback items per call: a batch past this answers 413 (the items go in one transaction)
    max_feedback_items: int = Field(1000, ge=1, le=100_000)
    # the longest the web service waits on one PostgreSQL round trip (statement, fetch, commit) before the
    # call answers 503: a stalled server fails calls promptly instead of holding them and the pool
    database_round_trip_seconds: float = Field(2.0, gt=0, le=300)
    fetch_timeout_seconds: float = Field(3.0, gt=0, le=30)
    # all of a call's fetching (missing keys, further pages of prefetched Bundles) ends by this deadline;
    # a FHIR server that drips bytes is cut off there, not held per read
    fetch_deadline_seconds: float = Field(3.0, gt=0, le=60)
    fetch_max_pages: int = Field(10, ge=1, le=1000)
    # one FHIR response larger than this is not read (streamed and cut off at the cap)
    fetch_max_response_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # how long feedback silences a service's cards for that patient at that EHR (issuer and tenant), in
    # days, 0 for not at all: `snooze_days` for any override, `snooze_days_by_reason` for each override
    # reason code and for `accepted` (merged over DEFAULT_SNOOZE_DAYS_BY_REASON)
    snooze_days: int = Field(90, ge=0)
    snooze_days_by_reason: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_SNOOZE_DAYS_BY_REASON)
    )
    pseudonym_key: str | None = None
    # keys the decision-log hash chain and its anchors; kept outside the database like the pseudonym key
    audit_key: str | None = None
    # where chain heads are anchored outside the database (an append-only file of signed head records)
    anchor_path: Path | None = None
    retention_days: int = Field(6 * 366, ge=1)
    # the Ed25519 key (PKCS #8 PEM) that signs the Merkle tree's checkpoints, kept outside the database like
    # the audit key; without one, a key generated once into the instance folder. Its public half, from
    # `spine-cds audit public-key`, is what outside auditors verify proofs with
    checkpoint_key_path: Path | None = None
    # the log's name in its checkpoints (C2SP tlog-checkpoint origin); default: from PUBLIC_BASE_URL
    checkpoint_origin: str | None = Field(None, pattern=r"^[^\s+]{1,200}$")
    # signs auditor session cookies
    secret_key: str | None = None
    # auditor logins: failures per account (five times as many per client address) before a lockout
    login_max_failures: int = Field(10, ge=1)
    login_lockout_seconds: int = Field(900, ge=1)
    # GET /metrics (Prometheus text format) for operators: off unless enabled; with a token, only for
    # "Authorization: Bearer <token>"
    metrics_enabled: bool = False
    # alert governance: a site's card flagged when it fires on more than this share of its eligible calls
    governance_warning_share: float = Field(0.25, gt=0, le=1)
    metrics_token: str | None = Field(None, min_length=16)
    # how new auditor passwords are hashed (werkzeug's method string); a stored hash names its own method,
    # so changing this affects only passwords set afterwards. Tests set a cheap one; production keeps scrypt
    password_hash: str = Field("scrypt", pattern=r"^(scrypt(:\d+:\d+:\d+)?|pbkdf2:sha(256|512)(:\d+)?)$")
    # reverse proxies in front that append to X-Forwarded-For; 0 trusts no such header (any client can forge it)
    proxy_hops: int = Field(0, ge=0, le=5)
    # population scoring: patients per task, and how long Redis waits before redelivering an
    # unacknowledged task (longer than the longest task, or it runs twice)
    population_chunk_size: int = Field(250, ge=1, le=100_000)
    worker_visibility_timeout: int = Field(7200, ge=1)
    # periodic work (celery beat), in seconds
    verify_interval_seconds: int = Field(3600, ge=10)
    purge_interval_seconds: int = Field(86400, ge=60)
    stale_job_seconds: int = Field(6 * 3600, ge=60)
    site: dict[str, Any] = Field(default_factory=dict)
    # the CDS services offered (discovery lists only these); encounter-start, problem-list-item-create and
    # appointment-book are off unless named here
    services: list[str] = Field(default_factory=lambda: list(DEFAULT_ENABLED))
    # prefetch templates replacing the built-in ones by key, or null to not ask for a key at all; the
    # fetch path reads exactly these (GET /cds-services shows the result)
    prefetch: dict[Annotated[str, Field(min_length=1, max_length=100)], str | None] = Field(default_factory=dict)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    log_level: str = "INFO"
    # apply database migrations at start; `spine-cds serve` does it once and turns this off for workers
    auto_migrate: bool = True

    @model_validator(mode="after")
    def _tls_unless_allowed(self) -> Settings:
        if not self.allow_http:
            for name, issuer in self.trusted_issuers.items():
                plain = issuer.plain_http_urls()
                if plain:
                    raise ValueError(
                        f"issuer {name!r}: {plain[0]} is plain http; use https (or SPINE_CDS_ALLOW_HTTP=true in development)"
                    )
        return self

    @field_validator("public_base_url")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("snooze_days_by_reason")
    @classmethod
    def _known_snooze_keys(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(SNOOZE_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; expected any of {', '.join(SNOOZE_KEYS)}")
        # a key left out keeps its default, so setting one reason does not reset the others
        return {**DEFAULT_SNOOZE_DAYS_BY_REASON, **value}

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in SERVICES_BY_ID]
        if unknown:
            raise ValueError(f"unknown service(s) {', '.join(map(repr, unknown))}; expected any of {', '.join(SERVICES_BY_ID)}")
        return list(dict.fromkeys(value))

    @field_validator("prefetch")
    @classmethod
    def _templates_are_relative_queries(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for key, template in value.items():
            if template is not None and (not template or "://" in template or template.startswith("/")):
                raise ValueError(
                    f"{key!r}: a template is a FHIR query relative to the fhirServer, such as 'Condition?patient={{{{context.patientId}}}}'"
                )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("site")
    @classmethod
    def _site_is_usable(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            load_model(site=value)
        except ModelConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @property
    def effective_anchor_path(self) -> Path:
        return self.anchor_path or self.instance_path / "anchors.ndjson"

    @property
    def effective_checkpoint_origin(self) -> str:
        if self.checkpoint_origin:
            return self.checkpoint_origin
        host = urlsplit(self.public_base_url).hostname if self.public_base_url else None
        return f"{host or 'spine-cds.local'}/decision-log"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.instance_path / 'spine-cds.sqlite3').resolve()}"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"settings file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"settings file {path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SettingsError(f"settings file {path}: cannot be parsed ({exc})") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: expected a mapping of settings")
    return {str(k).lower(): v for k, v in data.items()}


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}SETTINGS_FILE":
            continue
        try:
            values[name[len(ENV_PREFIX) :].lower()] = json.loads(raw)
        except ValueError:
            values[name[len(ENV_PREFIX) :].lower()] = raw
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    settings_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < file < environment < explicit overrides (the app factory's `config`)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file_name = settings_file or env.get(f"{ENV_PREFIX}SETTINGS_FILE")
    if file_name:
        values.update(_read_file(Path(file_name)))
    values.update(_from_environment(env))
    values.update({k.lower(): v for k, v in (overrides or {}).items()})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            # the setting's name in its environment spelling; nested parts (issuer URLs) as written
            head, *rest = [str(p) for p in error["loc"]] or ["settings"]
            key = ".".join([f"{ENV_PREFIX}{head.upper()}", *rest])
            problems.append(f"{key}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
