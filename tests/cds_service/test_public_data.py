"""Requests and records nobody on this team wrote: the Inferno CDS Hooks fixtures and Synthea patients.

They live beside the project in ../shared/data; the `shared_data` fixture skips these tests when that
folder is absent (and fails in CI, where it must be present).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hooks.synthetic import SNOMED, Factory, radiculopathy_knee_pain
from tests.cds_service.requests import PREFETCH_TEMPLATES, TODAY, fetched_from
from tests.conftest import SHARED_DATA
from tests.support import FhirServer, RunningService, assert_cards_response, error_of, resources_from_transaction

pytestmark = pytest.mark.shared_data

StartFhir = Callable[..., FhirServer]
SYNTHEA = sorted((SHARED_DATA / "synthea-r4").glob("*.json")) or [SHARED_DATA / "synthea-r4" / "absent.json"]
ORDER_SERVICES = {"order_select": "/cds-services/spine-knee-order-select", "order_sign": "/cds-services/spine-knee-order-sign"}


@pytest.fixture
def service(module_service: RunningService) -> RunningService:
    return module_service


def load(shared_data: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((shared_data / "cds-hooks" / f"{name}_hook_request.json").read_text())
    return data


def example_patient() -> list[dict[str, Any]]:
    """A likely-spinal record for the patient the public requests name ("example")."""
    return radiculopathy_knee_pain(Factory(seed=41, today=TODAY, patient_id="example"))


@pytest.mark.parametrize("name", sorted(ORDER_SERVICES))
def test_public_order_request_is_412_when_its_fhir_server_is_unreachable(
    shared_data: Path, service: RunningService, name: str
) -> None:
    """req 54: no prefetch in the request and its fhirServer (https://example/r4) cannot be reached: 412."""
    body = load(shared_data, name)
    assert "prefetch" not in body
    response = service.post(ORDER_SERVICES[name], body)
    assert response.status_code == 412
    assert error_of(response)["code"] == "prefetch_unavailable"


@pytest.mark.parametrize("name", sorted(ORDER_SERVICES))
def test_public_order_request_gets_cards_from_a_reachable_fhir_server(
    shared_data: Path, service_trusting: Callable[..., RunningService], fhir_server_factory: StartFhir, name: str
) -> None:
    """req 61, req 74: the same request, its fhirServer now a local FHIR server holding patient "example"
    (and requiring the request's token), is answered 200 with a cards array. The request first fails with
    412 and is then retried with the same hookInstance, as an EHR would."""
    body = load(shared_data, name)
    token = body["fhirAuthorization"]["access_token"]
    server = fhir_server_factory(example_patient(), token=token)
    # the issuer may name both servers: the request's own (unreachable) and the local one
    running = service_trusting(body["fhirServer"], server.base)
    assert running.post(ORDER_SERVICES[name], body).status_code == 412

    retry = {**body, "fhirServer": server.base}
    cards = assert_cards_response(running.post(ORDER_SERVICES[name], retry))

    # a diet order and a medication are not knee-directed: no card
    assert cards == []
    assert len(server.peer.requests) == len(PREFETCH_TEMPLATES)
    assert {r.headers["authorization"] for r in server.peer.requests} == {f"Bearer {token}"}


@pytest.mark.parametrize("name", sorted(ORDER_SERVICES))
def test_public_order_request_with_a_knee_order_added_gets_a_valid_card(
    shared_data: Path, service_trusting: Callable[..., RunningService], fhir_server_factory: StartFhir, name: str
) -> None:
    """req 74, req 80, req 83, req 87, req 88, req 90, req 93, req 105 (every card checked by card_problems): the public request with a knee MRI drafted alongside
    its own orders gives one valid card that names only the knee order."""
    body = load(shared_data, name)
    mri = Factory(seed=42, today=TODAY, patient_id="example").service_request(
        SNOMED, "241641004", "MRI of knee", status="draft", days_ago=0
    )
    body["hookInstance"] = f"{body['hookInstance']}-with-knee-order"
    body["context"]["draftOrders"]["entry"].append({"resource": mri})
    if "selections" in body["context"]:
        body["context"]["selections"].append(f"ServiceRequest/{mri['id']}")
    server = fhir_server_factory(example_patient(), token=body["fhirAuthorization"]["access_token"])
    service = service_trusting(server.base)

    cards = assert_cards_response(service.post(ORDER_SERVICES[name], {**body, "fhirServer": server.base}))

    assert len(cards) == 1
    assert cards[0]["summary"].startswith("Knee order drafted")
    assert cards[0]["detail"].startswith("**Knee-directed order drafted:** MRI of knee.")
    assert "NutritionOrder" not in cards[0]["detail"]


@pytest.mark.parametrize("name", ["encounter_start", "appointment_book"])
def test_other_public_hooks_sent_to_patient_view_are_wrong_hook(shared_data: Path, service: RunningService, name: str) -> None:
    response = service.post("/cds-services/spine-knee-patient-view", load(shared_data, name))
    assert response.status_code == 400
    assert error_of(response)["code"] == "wrong_hook"


@pytest.mark.parametrize("bundle_path", SYNTHEA, ids=lambda p: "_".join(p.stem.split("_")[:2]))
def test_synthea_patient_fetched_from_a_fhir_server(
    shared_data: Path, service_trusting: Callable[..., RunningService], fhir_server_factory: StartFhir, bundle_path: Path
) -> None:
    """req 61, req 74 and the card requirements: a whole Synthea history, served by a FHIR server the service
    fetches from (no prefetch), is assessed and answered with a valid cards array."""
    resources = resources_from_transaction(json.loads(bundle_path.read_text()))
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    assert conditions and all(c["subject"]["reference"] == f"Patient/{patient['id']}" for c in conditions)
    server = fhir_server_factory(resources, token="synthea-token")
    service = service_trusting(server.base)
    body = {
        "hook": "patient-view",
        "hookInstance": f"synthea-{patient['id']}",
        "context": {"userId": "Practitioner/dr-1", "patientId": patient["id"]},
    }

    cards = assert_cards_response(
        service.post("/cds-services/spine-knee-patient-view", fetched_from(body, server.base, "synthea-token"))
    )

    for card in cards:
        assert card["indicator"] in ("info", "warning")
        assert len(card["summary"]) < 140
        assert card["source"]["label"]
        assert card["uuid"]
    fetched = {r.path.split("/")[2] for r in server.peer.requests}
    assert fetched == {"Patient", "Condition", "Observation", "Procedure", "ServiceRequest"}


def test_synthea_conversion_keeps_every_resource(shared_data: Path) -> None:
    for bundle_path in SYNTHEA:
        bundle = json.loads(bundle_path.read_text())
        resources = resources_from_transaction(bundle)
        assert len(resources) == len(bundle["entry"])
        assert all(r.get("id") for r in resources)
        assert "urn:uuid:" not in json.dumps(resources)
