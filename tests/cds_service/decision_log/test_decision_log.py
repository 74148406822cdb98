"""The decision log on SQLite and PostgreSQL: one committed row per authenticated call, no identifiers in it.

Every test reads the log through its own connection right after the response returns, so a row that
was not committed before the answer would not be seen. The PostgreSQL database is shared by the
session, so rows are looked up by their unique hook instance.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from cds_service.database import MIGRATIONS
from cds_service.decision_log.tables import Decision
from hooks.synthetic import generate
from tests.cds_service.requests import FHIR_TOKEN, TODAY, fetched_from, order_sign, patient_view_of
from tests.support import FhirServer, LogReader, RunningService, assert_cards_response

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
PSEUDONYM_KEY = b"test-pseudonym-key"  # what service_factory configures


@pytest.fixture
def running(service_factory: Callable[..., RunningService], database_url: str) -> RunningService:
    return service_factory(database_url=database_url)


@pytest.fixture
def log(running: RunningService, read_log: Callable[[RunningService], LogReader]) -> LogReader:
    return read_log(running)


def patient(seed: int) -> list[dict[str, Any]]:
    # a random seed per test keeps PostgreSQL runs (one database per session) apart
    return generate("radiculopathy-knee-pain", seed=seed, today=TODAY)


def fresh_seed() -> int:
    return uuid.uuid4().int % 10**9


def test_a_call_with_cards_logs_one_complete_row(running: RunningService, log: LogReader) -> None:
    resources = patient(fresh_seed())
    body = patient_view_of(resources)

    response = running.post(PATIENT_VIEW, body)
    cards = assert_cards_response(response)

    row = log.decision(hook_instance=body["hookInstance"])
    model = running.client.get("/model.json").json()
    card = cards[0]
    assert card["indicator"] == "warning"
    assert row["service_id"] == "spine-knee-patient-view"
    assert row["hook"] == "patient-view"
    assert row["issuer"] == running.ehr.issuer
    assert row["user_id"] == "Practitioner/dr-1"
    assert row["band"] == "likely"
    assert (row["model_id"], row["model_version"], row["model_hash"]) == (model["id"], model["version"], model["hash"])
    assert row["card_uuids"] == [card["uuid"]]
    assert row["suggestion_uuids"] == [card["suggestions"][0]["uuid"]]
    assert row["outcome"] == "cards"
    assert row["status_code"] == 200
    assert isinstance(row["latency_ms"], float) and row["latency_ms"] >= 0
    assert row["created_at"] is not None
    assert row["input_digest"].startswith("hmac-sha256:")
    assert [c["uuid"] for c in row["cards"]] == [card["uuid"]]
    assert row["assessment"]["band"] == "likely"
    assert row["assessment"]["model"] == {"id": model["id"], "version": model["version"], "hash": model["hash"]}


def test_the_tenant_claim_is_logged(running: RunningService, log: LogReader) -> None:
    body = patient_view_of(patient(fresh_seed()))
    assert running.post(PATIENT_VIEW, body, tenant="north-clinic").status_code == 200
    assert log.decision(hook_instance=body["hookInstance"])["tenant"] == "north-clinic"


def test_a_call_without_a_card_logs_its_outcome(running: RunningService, log: LogReader) -> None:
    resources = generate("knee-oa-only", seed=fresh_seed(), today=TODAY)
    body = patient_view_of(resources)
    assert running.post(PATIENT_VIEW, body).json() == {"cards": []}
    row = log.decision(hook_instance=body["hookInstance"])
    assert (row["outcome"], row["status_code"], row["band"]) == ("no-card", 200, "unlikely")
    assert row["card_uuids"] == [] and row["suggestion_uuids"] == [] and row["cards"] == []


def test_findings_and_their_references_are_in_the_assessment(running: RunningService, log: LogReader) -> None:
    resources = patient(fresh_seed())
    body = patient_view_of(resources)
    assert running.post(PATIENT_VIEW, body).status_code == 200

    assessment = log.decision(hook_instance=body["hookInstance"])["assessment"]
    by_code = {r["code"]["coding"][0]["code"]: f"Condition/{r['id']}" for r in resources if r["resourceType"] == "Condition"}
    findings = {f["signal"]: f for f in assessment["findings"]}
    assert set(findings) == {"lumbar_radiculopathy", "low_back_pain", "l3_l4_picture", "thigh_with_back_problem"}
    assert findings["lumbar_radiculopathy"]["references"] == [by_code["M54.16"]]
    assert findings["low_back_pain"]["references"] == [by_code["279039007"]]
    assert by_code["78514002"] in findings["l3_l4_picture"]["references"]
    assert (findings["low_back_pain"]["points"], findings["low_back_pain"]["counted_with"]) == (0, "lumbar_radiculopathy")
    for finding in findings.values():
        assert finding["codes"] and finding["date"] and isinstance(finding["weight"], float)


def test_an_order_sign_call_is_logged(running: RunningService, log: LogReader) -> None:
    body = order_sign()
    cards = assert_cards_response(running.post("/cds-services/spine-knee-order-sign", body))
    row = log.decision(service_id="spine-knee-order-sign", hook_instance=body["hookInstance"])
    assert (row["hook"], row["outcome"], row["card_uuids"]) == ("order-sign", "cards", [cards[0]["uuid"]])


@pytest.mark.parametrize(
    ("change", "status", "outcome"),
    [
        ("drop-user", 400, "invalid_request"),
        ("wrong-hook", 400, "wrong_hook"),
        ("no-prefetch", 412, "prefetch_unavailable"),
    ],
)
def test_refused_calls_are_logged_too(running: RunningService, log: LogReader, change: str, status: int, outcome: str) -> None:
    """req 54: a 412 (like every 400) is answered and logged with its error code as the outcome."""
    resources = patient(fresh_seed())
    body = patient_view_of(resources, prefetch=change != "no-prefetch")
    if change == "drop-user":
        del body["context"]["userId"]
    if change == "wrong-hook":
        body["hook"] = "order-sign"

    response = running.post(PATIENT_VIEW, body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == outcome

    row = log.decision(hook_instance=body["hookInstance"])
    assert (row["outcome"], row["status_code"], row["service_id"]) == (outcome, status, "spine-knee-patient-view")
    assert row["issuer"] == running.ehr.issuer
    assert row["cards"] == [] and row["card_uuids"] == [] and row["band"] is None
    assert isinstance(row["latency_ms"], float)
    if change == "no-prefetch":
        assert row["patient_pseudonym"] == hmac.new(PSEUDONYM_KEY, resources[0]["id"].encode(), hashlib.sha256).hexdigest()


def test_malformed_and_unsupported_bodies_are_logged(running: RunningService, log: LogReader) -> None:
    before = log.count("decisions")
    path = PATIENT_VIEW
    assert (
        running.client.post(path, content=b"{", headers={**running.headers(path), "Content-Type": "application/json"}).status_code
        == 400
    )
    assert (
        running.client.post(path, content=b"{}", headers={**running.headers(path), "Content-Type": "text/plain"}).status_code
        == 415
    )
    assert running.post("/cds-services/no-such-service", {"hook": "patient-view"}).status_code == 404
    assert log.count("decisions") == before + 3
    newest = log.decisions()[-3:]
    assert [(r["outcome"], r["status_code"]) for r in newest] == [
        ("malformed_json", 400),
        ("unsupported_media_type", 415),
        ("unknown_service", 404),
    ]
    assert newest[2]["service_id"] == "no-such-service"


def test_an_unauthenticated_call_logs_nothing(running: RunningService, log: LogReader) -> None:
    body = patient_view_of(patient(fresh_seed()))
    before = log.count("decisions")

    no_token = running.client.post(PATIENT_VIEW, json=body)
    other_audience = running.client.post(PATIENT_VIEW, json=body, headers=running.headers("/cds-services/elsewhere"))

    assert (no_token.status_code, other_audience.status_code) == (401, 401)
    assert log.count("decisions") == before
    assert log.decisions(hook_instance=body["hookInstance"]) == []


def test_no_patient_id_or_access_token_is_stored(
    service_trusting: Callable[..., RunningService],
    database_url: str,
    read_log: Callable[[RunningService], LogReader],
    fhir_server_factory: Callable[..., FhirServer],
) -> None:
    """The row names the patient only by a keyed HMAC; the EHR's FHIR access token is never stored."""
    resources = patient(fresh_seed())
    patient_id = resources[0]["id"]
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    running = service_trusting(server.base, database_url=database_url)
    log = read_log(running)
    body = fetched_from(patient_view_of(resources), server.base)

    cards = assert_cards_response(running.post(PATIENT_VIEW, body))
    assert cards and cards[0]["suggestions"][0]["actions"][0]["resource"]["subject"] == {"reference": f"Patient/{patient_id}"}

    row = log.decision(hook_instance=body["hookInstance"])
    stored = json.dumps(row, default=str)
    assert patient_id not in stored
    assert FHIR_TOKEN not in stored
    assert re.fullmatch(r"[0-9a-f]{64}", row["patient_pseudonym"])
    assert row["patient_pseudonym"] == hmac.new(PSEUDONYM_KEY, patient_id.encode(), hashlib.sha256).hexdigest()
    assert server.base not in stored


def test_the_pseudonym_is_stable_per_patient_and_differs_between_patients(running: RunningService, log: LogReader) -> None:
    seed = fresh_seed()
    first, again, other = patient_view_of(patient(seed)), patient_view_of(patient(seed)), patient_view_of(patient(seed + 1))
    for body in (first, again, other):
        assert running.post(PATIENT_VIEW, body).status_code == 200
    pseudonyms = [log.decision(hook_instance=b["hookInstance"])["patient_pseudonym"] for b in (first, again, other)]
    assert pseudonyms[0] == pseudonyms[1]
    assert pseudonyms[2] != pseudonyms[0]
    assert all(re.fullmatch(r"[0-9a-f]{64}", p) for p in pseudonyms)


def test_a_repeated_hook_instance_is_idempotent(running: RunningService, log: LogReader) -> None:
    body = patient_view_of(patient(fresh_seed()))
    first = running.post(PATIENT_VIEW, body)
    second = running.post(PATIENT_VIEW, body)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(first.json()["cards"]) == 1
    assert len(log.decisions(hook_instance=body["hookInstance"])) == 1


def test_the_same_hook_instance_on_two_services_is_two_decisions(running: RunningService, log: LogReader) -> None:
    body = order_sign()
    body["hookInstance"] = str(uuid.uuid4())
    assert running.post("/cds-services/spine-knee-order-sign", body).status_code == 200
    body["hook"] = "order-select"
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    body["context"]["selections"] = [f"ServiceRequest/{order['id']}"]
    assert running.post("/cds-services/spine-knee-order-select", body).status_code == 200
    rows = log.decisions(hook_instance=body["hookInstance"])
    assert sorted(r["service_id"] for r in rows) == ["spine-knee-order-select", "spine-knee-order-sign"]


def test_a_retry_after_412_with_the_prefetch_gets_the_cards(running: RunningService, log: LogReader) -> None:
    """req 54: after a 412 the EHR may retry the same hook instance with the prefetch; that retry is answered
    on its own data, not with the failed attempt's (empty) result."""
    resources = patient(fresh_seed())
    body = patient_view_of(resources, prefetch=False)
    assert running.post(PATIENT_VIEW, body).status_code == 412

    retry = {**body, "prefetch": patient_view_of(resources)["prefetch"]}
    cards = assert_cards_response(running.post(PATIENT_VIEW, retry))
    assert len(cards) == 1

    rows = log.decisions(hook_instance=body["hookInstance"])
    # the log is append-only: the failed attempt stays, followed by the answered retry
    assert [(r["outcome"], r["status_code"], r["card_uuids"]) for r in rows] == [
        ("prefetch_unavailable", 412, []),
        ("cards", 200, [cards[0]["uuid"]]),
    ]
    # and the retry after that is idempotent again
    assert running.post(PATIENT_VIEW, retry).json() == {"cards": cards}


def test_the_schema_was_created_by_alembic(running: RunningService, log: LogReader) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert log.scalars("SELECT version_num FROM alembic_version") == [ScriptDirectory.from_config(config).get_current_head()]


def test_a_second_answer_to_one_call_is_refused_by_the_database(running: RunningService, log: LogReader) -> None:
    """The unique index behind idempotency holds even for a writer that skips the service's code."""
    body = patient_view_of(patient(fresh_seed()))
    assert running.post(PATIENT_VIEW, body).status_code == 200
    row = log.decision(hook_instance=body["hookInstance"])
    # the same call: same service, hookInstance, caller (issuer, tenant) and request
    same_call = ("service_id", "hook_instance", "issuer", "tenant", "input_digest")
    second = {**{k: row[k] for k in same_call}, "latency_ms": 1.0}
    with pytest.raises(IntegrityError), log.engine.begin() as connection:
        connection.execute(insert(Decision), {**second, "outcome": "cards", "status_code": 200})
    # a failed attempt at the same call is still logged beside the answer
    with log.engine.begin() as connection:
        connection.execute(insert(Decision), {**second, "outcome": "prefetch_unavailable", "status_code": 412})


def test_a_patient_using_the_app_is_logged_by_pseudonym_only(running: RunningService, log: LogReader) -> None:
    """A patient-facing app sends userId Patient/<id>: that id is patient data and is pseudonymised too."""
    body = patient_view_of(patient(fresh_seed()))
    body["context"]["userId"] = "Patient/self-123"
    assert running.post(PATIENT_VIEW, body).status_code == 200
    row = log.decision(hook_instance=body["hookInstance"])
    assert row["user_id"].startswith("Patient/pseudonym-")
    assert "self-123" not in str(row)


def test_identical_calls_racing_each_other_log_one_answer(running: RunningService, log: LogReader) -> None:
    """Two deliveries of the same hook call at the same moment: one decision, the same cards to both."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    body = patient_view_of(patient(fresh_seed()))
    start = Barrier(4)

    def send(_: int) -> dict[str, Any]:
        start.wait()
        response = running.post(PATIENT_VIEW, body)
        assert response.status_code == 200
        answer: dict[str, Any] = response.json()
        return answer

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    assert all(a == answers[0] for a in answers) and len(answers[0]["cards"]) == 1
    rows = log.decisions(hook_instance=body["hookInstance"])
    assert [(r["status_code"], r["card_uuids"]) for r in rows] == [(200, [answers[0]["cards"][0]["uuid"]])]
