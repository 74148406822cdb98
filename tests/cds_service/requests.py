"""Named hook request bodies, built from synthetic patients."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from hooks.model import load_model
from hooks.services import default_prefetch
from hooks.synthetic import CPT, ICD10, SNOMED, Factory, generate, prefetch_for, searchset

TODAY = date.today()
# the prefetch templates of the embedded defaults: one FHIR read per key when the EHR sends no prefetch
PREFETCH_TEMPLATES = default_prefetch(load_model())


def patient_view(profile: str = "radiculopathy-knee-pain", *, prefetch: bool = True, seed: int = 0) -> dict[str, Any]:
    return patient_view_of(generate(profile, seed=seed, today=TODAY), prefetch=prefetch)


def knee_mri(factory: Factory) -> dict[str, Any]:
    return factory.service_request(SNOMED, "241641004", "MRI of knee", status="draft", days_ago=0)


def order_sign(profile: str = "radiculopathy-knee-pain") -> dict[str, Any]:
    resources = generate(profile, today=TODAY)
    order = knee_mri(Factory(seed=5, today=TODAY, patient_id=resources[0]["id"]))
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": resources[0]["id"], "draftOrders": searchset([order])},
        "prefetch": prefetch_for(resources),
    }


def order_select(profile: str = "radiculopathy-knee-pain") -> dict[str, Any]:
    body = order_sign(profile)
    body["hook"] = "order-select"
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    body["context"]["selections"] = [f"ServiceRequest/{order['id']}"]
    return body


# -- appended: bodies fetched by the service, feedback ---------------------------------------------

FHIR_TOKEN = "ehr-issued-access-token-7f3a"


def fhir_authorization(token: str = FHIR_TOKEN) -> dict[str, Any]:
    """A CDS Hooks 2.0 fhirAuthorization object for `token`."""
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Condition.read user/Observation.read user/Procedure.read user/ServiceRequest.read",
        "subject": "spine-cds",
    }


def fetched_from(body: dict[str, Any], fhir_server: str, token: str | None = FHIR_TOKEN) -> dict[str, Any]:
    """`body` without its prefetch, pointing the service at `fhir_server` (with `token` when given)."""
    out = {k: v for k, v in body.items() if k != "prefetch"}
    out["fhirServer"] = fhir_server
    if token is not None:
        out["fhirAuthorization"] = fhir_authorization(token)
    return out


def patient_view_of(resources: list[dict[str, Any]], *, prefetch: bool = True) -> dict[str, Any]:
    """A patient-view body for these resources (the first one the Patient)."""
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": resources[0]["id"]},
    }
    if prefetch:
        body["prefetch"] = prefetch_for(resources)
    return body


def accepted(card: dict[str, Any], timestamp: str = "2026-11-24T10:00:00Z") -> dict[str, Any]:
    """Feedback accepting the card's first suggestion."""
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": timestamp,
    }


def overridden(
    card: dict[str, Any], code: str | None = None, comment: str | None = None, timestamp: str = "2026-11-24T10:05:00Z"
) -> dict[str, Any]:
    """Feedback overriding the card, with the card's override reason `code` and a comment when given."""
    item: dict[str, Any] = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": timestamp}
    reason: dict[str, Any] = {}
    if code is not None:
        reason["reason"] = next(r for r in card["overrideReasons"] if r["code"] == code)
    if comment is not None:
        reason["userComment"] = comment
    if reason:
        item["overrideReason"] = reason
    return item


# -- appended: the trigger points a site turns on (encounter-start, problem-list-item-create, appointment-book)


# the problems problem_added can add (ICD-10-CM), and the procedures appointment_book can book (CPT)
PROBLEM_DISPLAYS = {
    "M25.561": "Pain in right knee",
    "M17.11": "Unilateral primary osteoarthritis, right knee",
    "M54.50": "Low back pain, unspecified",
    "I10": "Essential (primary) hypertension",
}
SERVICE_TYPE_DISPLAYS = {
    "29881": "Arthroscopy, knee, surgical; with meniscectomy",
    "27447": "Arthroplasty, knee, condyle and plateau",
    "29827": "Arthroscopy, shoulder, surgical; with rotator cuff repair",
    "99213": "Office or other outpatient visit, established patient",
}


def encounter_start(profile: str = "radiculopathy-knee-pain", *, encounter_id: str = "enc-1") -> dict[str, Any]:
    """An encounter-start body for a synthetic profile, its record prefetched."""
    resources = generate(profile, today=TODAY)
    return {
        "hook": "encounter-start",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": resources[0]["id"], "encounterId": encounter_id},
        "prefetch": prefetch_for(resources),
    }


def problem_added(profile: str = "radiculopathy-knee-pain", *, code: str = "M25.561") -> dict[str, Any]:
    """A problem-list-item-create body adding one active ICD-10-CM Condition `code` to a synthetic profile's record."""
    resources = generate(profile, today=TODAY)
    factory = Factory(seed=5, today=TODAY, patient_id=resources[0]["id"])
    condition = factory.condition(ICD10, code, PROBLEM_DISPLAYS.get(code, code), onset_days_ago=0)
    return {
        "hook": "problem-list-item-create",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/dr-1",
            "patientId": resources[0]["id"],
            "conditions": searchset([condition]) | {"type": "collection"},
        },
        "prefetch": prefetch_for(resources),
    }


def appointment_book(
    profile: str = "radiculopathy-knee-pain",
    *,
    user_id: str = "Practitioner/dr-1",
    service_type: str = "29881",
    status: str = "proposed",
) -> dict[str, Any]:
    """An appointment-book body by `user_id` booking one Appointment of CPT `service_type` for a synthetic profile."""
    resources = generate(profile, today=TODAY)
    factory = Factory(seed=5, today=TODAY, patient_id=resources[0]["id"])
    booked = {
        "resourceType": "Appointment",
        "id": factory.new_id(),
        "status": status,
        "serviceType": [
            {"coding": [{"system": CPT, "code": service_type, "display": SERVICE_TYPE_DISPLAYS.get(service_type, service_type)}]}
        ],
        "start": f"{factory.days_ago(-14)}T09:00:00Z",
        "end": f"{factory.days_ago(-14)}T10:00:00Z",
        "participant": [{"actor": {"reference": f"Patient/{resources[0]['id']}"}, "status": "needs-action"}],
    }
    return {
        "hook": "appointment-book",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": user_id,
            "patientId": resources[0]["id"],
            "appointments": searchset([booked]) | {"type": "collection"},
        },
        "prefetch": prefetch_for(resources),
    }
