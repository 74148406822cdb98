"""`GET /metrics` for operators: Prometheus text format, from the standard client library.

Off by default (`METRICS_ENABLED`); it does not take the EHR's JWT but its own bearer token when
`METRICS_TOKEN` is set (compared in constant time), and is best kept off the public listener either way.
Under gunicorn's several worker processes `spine-cds serve` points prometheus_client's multiprocess mode
at a folder of the instance (PROMETHEUS_MULTIPROC_DIR), so a scrape sees every worker's counts."""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from cds_service.decision_log.queries import latest_verification
from cds_service.decision_log.transparency import anchoring_state
from cds_service.errors import DATABASE_UNAVAILABLE

# hook-call latency buckets, in seconds: the cards are meant to arrive within a few hundred milliseconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _age(moment: datetime) -> float:
    return (datetime.now(UTC) - (moment if moment.tzinfo else moment.replace(tzinfo=UTC))).total_seconds()


class _LogHealth(Collector):
    """The decision log's checks, read at scrape: when it was last verified and whether it was intact, and how
    far the signed checkpoints lag behind it (a tree that stopped growing shows as entries piling up)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily("spine_cds_log_verification_age_seconds", "Seconds since the decision log was last verified.")
        intact = GaugeMetricFamily("spine_cds_log_verification_ok", "1 when the last verification found the log intact.")
        signed = GaugeMetricFamily("spine_cds_log_checkpoint_age_seconds", "Seconds since the newest signed checkpoint.")
        behind = GaugeMetricFamily("spine_cds_log_entries_not_in_checkpoint", "Log entries the newest signed checkpoint does not cover.")
        try:
            last = latest_verification(self.engine)
            checkpoint_at, uncovered = anchoring_state(self.engine)
        except DATABASE_UNAVAILABLE:
            last, checkpoint_at, uncovered = None, None, None
        if last is not None:
            age.add_metric([], _age(datetime.fromisoformat(str(last["created_at"]).replace("Z", "+00:00"))))
            intact.add_metric([], 1.0 if last["ok"] else 0.0)
        if checkpoint_at is not None:
            signed.add_metric([], _age(checkpoint_at))
        if uncovered is not None:
            behind.add_metric([], float(uncovered))
        yield from (age, intact, signed, behind)


class Metrics:
    """The service's counters. In multiprocess mode they live in the shared folder, not in a registry."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry()
        own = None if self.multiprocess_dir else self.registry
        self.calls = Counter(
            "spine_cds_hook_calls", "Hook calls answered, by service and HTTP status.", ["service", "status"], registry=own
        )
        self.latency = Histogram(
            "spine_cds_hook_call_seconds", "Time to answer a hook call.", ["service"], buckets=LATENCY_BUCKETS, registry=own
        )
        self.fetches = Counter("spine_cds_fhir_fetches", "Prefetch keys fetched from FHIR servers, by outcome.", ["outcome"], registry=own)
        self.refused = Counter("spine_cds_refused_tokens", "EHR tokens refused (401), by reason code.", ["reason"], registry=own)
        self.appends = Counter("spine_cds_log_appends", "Entries appended to the decision log, by kind.", ["kind"], registry=own)
        self._log_health = _LogHealth(engine)
        if own is not None:
            own.register(self._log_health)

    def exposition(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        registry.register(self._log_health)
        return generate_latest(registry)

    def appended(self, kind: str, count: int = 1) -> None:
        self.appends.labels(kind).inc(count)


bp = Blueprint("metrics", __name__)


def _metrics() -> Metrics:
    found: Metrics = current_app.extensions["spine_cds_metrics"]
    return found


@bp.before_app_request
def _started() -> None:
    g.metrics_started = time.perf_counter()


@bp.after_app_request
def _observe(response: Response) -> Response:
    if request.endpoint == "cds.call_service" and "metrics_started" in g:
        service_id = (request.view_args or {}).get("service_id", "")
        known = current_app.extensions["spine_cds"].hooks.catalog.get(service_id) is not None
        label = service_id if known else "unknown"  # any path is callable: unknown ids share one label
        _metrics().calls.labels(label, str(response.status_code)).inc()
        _metrics().latency.labels(label).observe(time.perf_counter() - g.metrics_started)
    return response


@bp.get("/metrics")
def metrics() -> Response:
    token: str | None = current_app.extensions["spine_cds"].settings.metrics_token
    if token is not None:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            response = Response(status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return Response(_metrics().exposition(), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

