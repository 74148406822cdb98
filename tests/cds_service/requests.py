"""Named hook request bodies, built from synthetic patients."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from hooks.model import load_model
from hooks.services import default_prefetch
from hooks.synthetic import SNOMED, Factory, generate, prefetch_for, searchset

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
