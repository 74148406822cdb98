"""`GET /metrics`: Prometheus text for operators, behind its own setting and token, counting across workers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from cds_service.decision_log.chain import AnchorFile, verify_and_record
from cds_service.decision_log.transparency import extend_and_sign
from hooks.synthetic import generate
from tests.cds_service.cli.test_cli import serving
from tests.cds_service.requests import FHIR_TOKEN, TODAY, fetched_from, patient_view_of
from tests.support import FhirServer, RunningService, SigningEhr

VIEW = "/cds-services/spine-knee-patient-view"
TOKEN = "a-scraper-token-of-some-length"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_off_unless_enabled(service: RunningService) -> None:
    assert service.client.get("/metrics").status_code == 404


def test_metrics_count_calls_latency_fetches_refusals_appends_and_verification_age(
    service_trusting: Callable[..., RunningService],
    fhir_server_factory: Callable[..., FhirServer],
    ehr: SigningEhr,
    tmp_path: Path,
) -> None:
    resources = generate("radiculopathy-knee-pain", today=TODAY)
    fhir = fhir_server_factory(resources, token=FHIR_TOKEN)
    running = service_trusting(fhir.base, metrics_enabled=True)
    assert running.post(VIEW, patient_view_of(resources)).status_code == 200
    assert running.post("/cds-services/no-such-service", patient_view_of(resources)).status_code == 404
    assert running.post(VIEW, fetched_from(patient_view_of(resources, prefetch=False), fhir.base)).status_code == 200
    forged = SigningEhr(issuer=ehr.issuer).token(running.base_url + VIEW)
    assert running.client.post(VIEW, json={}, headers={"Authorization": f"Bearer {forged}"}).status_code == 401

    response = running.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    scraped = samples(response.text)
    assert value(scraped, "spine_cds_hook_calls_total", service="spine-knee-patient-view", status="200") == 2
    assert value(scraped, "spine_cds_hook_calls_total", service="unknown", status="404") == 1
    assert value(scraped, "spine_cds_hook_calls_total", service="spine-knee-patient-view", status="401") == 1
    assert value(scraped, "spine_cds_hook_call_seconds_count", service="spine-knee-patient-view") == 3
    assert value(scraped, "spine_cds_fhir_fetches_total", outcome="ok") >= 5
    assert value(scraped, "spine_cds_refused_tokens_total", reason="signature") == 1
    assert value(scraped, "spine_cds_log_appends_total", kind="decision") == 3
    assert ("spine_cds_log_verification_age_seconds", frozenset()) not in scraped  # never verified yet
    assert ("spine_cds_log_checkpoint_age_seconds", frozenset()) not in scraped  # never signed yet
    assert value(scraped, "spine_cds_log_entries_not_in_checkpoint") == 3
    assert forged not in response.text

    parts = running.app.extensions["spine_cds"]
    verify_and_record(parts.engine, parts.runtime.audit_key, AnchorFile(tmp_path / "anchors"))
    scraped = samples(running.client.get("/metrics").text)
    assert 0 <= value(scraped, "spine_cds_log_verification_age_seconds") < 3600
    assert value(scraped, "spine_cds_log_verification_ok") == 1
    extend_and_sign(parts.engine, parts.runtime.checkpoint_signer)
    scraped = samples(running.client.get("/metrics").text)
    assert 0 <= value(scraped, "spine_cds_log_checkpoint_age_seconds") < 3600
    assert value(scraped, "spine_cds_log_entries_not_in_checkpoint") == 0


def test_metrics_with_a_token_answer_only_that_bearer(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory(metrics_enabled=True, metrics_token=TOKEN)
    assert running.client.get("/metrics").status_code == 401
    assert running.client.get("/metrics", headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 401
    assert running.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_serve_counts_every_workers_calls(tmp_path: Path) -> None:
    """Under gunicorn's two workers a scrape reaches one of them and still counts the calls both answered."""
    ehr = SigningEhr()
    public = "https://cds.example.org"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SPINE_CDS_", "PROMETHEUS_"))},
        "SPINE_CDS_INSTANCE_PATH": str(tmp_path / "instance"),
        "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ehr.issuer: {"jwks": ehr.jwks}}),
        "SPINE_CDS_PUBLIC_BASE_URL": public,
        "SPINE_CDS_METRICS_ENABLED": "true",
    }
    resources = generate("radiculopathy-knee-pain", today=TODAY)
    with serving(env, "--workers", "2", "--threads", "1") as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        for _ in range(20):
            headers = {"Authorization": f"Bearer {ehr.token(public + VIEW)}"}
            assert client.post(VIEW, json=patient_view_of(resources), headers=headers).status_code == 200
        scraped = samples(client.get("/metrics").text)
    assert value(scraped, "spine_cds_hook_calls_total", service="spine-knee-patient-view", status="200") == 20
    assert value(scraped, "spine_cds_log_appends_total", kind="decision") == 20


def test_metrics_count_the_same_on_postgresql(service_factory: Callable[..., RunningService], postgres_url: str) -> None:
    running = service_factory(metrics_enabled=True, database_url=postgres_url)
    resources = generate("radiculopathy-knee-pain", today=TODAY)
    for _ in range(3):
        assert running.post(VIEW, patient_view_of(resources)).status_code == 200
    scraped = samples(running.client.get("/metrics").text)
    assert value(scraped, "spine_cds_hook_calls_total", service="spine-knee-patient-view", status="200") == 3
    assert value(scraped, "spine_cds_log_appends_total", kind="decision") == 3
