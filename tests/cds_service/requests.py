"""Named hook request bodies, built from synthetic patients."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from hooks.synthetic import SNOMED, Factory, generate, prefetch_for, searchset

TODAY = date.today()


def patient_view(profile: str = "radiculopathy-knee-pain", *, prefetch: bool = True, seed: int = 0) -> dict[str, Any]:
    resources = generate(profile, seed=seed, today=TODAY)
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": resources[0]["id"]},
    }
    if prefetch:
        body["prefetch"] = prefetch_for(resources)
    return body


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
