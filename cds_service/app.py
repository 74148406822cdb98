"""The application factory."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import JSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from cds_service import metrics as metrics_views
from cds_service.auditor import api, pages
from cds_service.auditor.throttle import AttemptStore, FallbackAttempts, LoginThrottle, MemoryAttempts, RedisAttempts
from cds_service.cds_hooks import views as cds_hooks_views
from cds_service.cds_hooks.auth import (
    Authenticator,
    DatabaseReplayStore,
    FallbackReplayStore,
    KeySets,
    RedisReplayStore,
    ReplayStore,
)
from cds_service.cds_hooks.fetch import PrefetchFetcher
from cds_service.cds_hooks.pipeline import FeedbackPipeline, HookPipeline, snooze_rule
from cds_service.cds_hooks.refusals import RefusalCounter
from cds_service.components import Components
from cds_service.errors import register_error_handlers
from cds_service.keys import instance_secret
from cds_service.metrics import Metrics
from cds_service.population import views as population_views
from cds_service.runtime import Runtime
from cds_service.settings import load_settings
from hooks.services import Catalog


class OrjsonProvider(JSONProvider):
    """Responses carry cards of several kilobytes; orjson writes them several times faster."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the service; `config` overrides settings from the file and environment."""
    settings = load_settings(config)
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, instance_path=str(settings.instance_path.resolve()))
    app.json = OrjsonProvider(app)
    app.secret_key = instance_secret(settings, settings.secret_key, "session.key")
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(settings.public_base_url and settings.public_base_url.startswith("https://")),
        PERMANENT_SESSION_LIFETIME=8 * 3600,
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if settings.proxy_hops:
        # the client's address (login limits) from the proxies' X-Forwarded-For; only the address, since
        # the URL the EHR calls comes from SPINE_CDS_PUBLIC_BASE_URL
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)  # type: ignore[method-assign]
    logging.getLogger("cds_service").setLevel(settings.log_level)

    runtime = Runtime(settings, round_trip_seconds=settings.database_round_trip_seconds)
    if settings.auto_migrate:
        runtime.migrate()
    engine = runtime.engine
    redis_client = None
    replay: ReplayStore
    attempts: AttemptStore
    if settings.redis_url:
        import redis

        redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        # a Redis outage must not stop the cards: the jti memory falls back to the database meanwhile
        replay = FallbackReplayStore(RedisReplayStore(redis_client), DatabaseReplayStore(engine))
        attempts = FallbackAttempts(RedisAttempts(redis_client), MemoryAttempts())
    else:
        # the jti memory in the database every worker shares (the SQLite file or PostgreSQL)
        replay, attempts = DatabaseReplayStore(engine), MemoryAttempts()
    model = runtime.model
    metrics = Metrics(engine) if settings.metrics_enabled else None
    fetcher = PrefetchFetcher.from_settings(settings)
    refusals = RefusalCounter(engine, settings.trusted_issuers)
    if metrics is not None:
        fetcher.fetched = lambda outcome: metrics.fetches.labels(outcome).inc()
        runtime.decision_log.appended = metrics.appended
        refusals.counted = lambda reason_code: metrics.refused.labels(reason_code).inc()
    hooks = HookPipeline(
        model,
        fetcher,
        runtime.decision_log,
        digest_key=runtime.pseudonym_key,
        snooze=snooze_rule(settings),
        catalog=Catalog.build(model, settings.services, settings.prefetch),
        issuers=settings.trusted_issuers,
    )
    app.extensions["spine_cds"] = Components(
        runtime=runtime,
        authenticator=Authenticator(settings, replay, KeySets(settings.jwks_cache_seconds, settings.fetch_timeout_seconds)),
        hooks=hooks,
        feedback=FeedbackPipeline(runtime.decision_log, settings.max_feedback_items),
        login_throttle=LoginThrottle(attempts, settings.login_max_failures, settings.login_lockout_seconds),
        refusals=refusals,
        redis=redis_client,
    )
    register_error_handlers(app)
    app.register_blueprint(cds_hooks_views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(population_views.bp)
    if metrics is not None:
        app.extensions["spine_cds_metrics"] = metrics
        app.register_blueprint(metrics_views.bp)
    return app
