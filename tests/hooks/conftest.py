"""Named hook requests for the domain tests: context and prefetch, built by factories."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest

from hooks.assessment import Assessment, assess
from hooks.cards import CardOptions
from hooks.fhir import read_record
from hooks.model import Model
from hooks.services import SERVICES_BY_ID, Evaluation, evaluate
from hooks.synthetic import ICD10, SNOMED, Factory, Resource, generate, prefetch_for, searchset

DOCS_URL = "https://cds.example.org/model"
CPT = "http://www.ama-assn.org/go/cpt"
SITE_SYSTEM = "http://example.org/site-codes"


# -- small resource helpers ----------------------------------------------------------------------


def assess_resources(model: Model, resources: list[Resource], today: date) -> Assessment:
    """Read loose resources into a record and assess it."""
    return assess(model, read_record(model, resources), today)


def patient_born(factory: Factory, birth_date: date) -> Resource:
    return {"resourceType": "Patient", "id": factory.patient_id, "gender": "female", "birthDate": birth_date.isoformat()}


def knee_pain(factory: Factory, **kw: Any) -> Resource:
    return factory.condition(SNOMED, "30989003", "Knee pain", **kw)


def low_back_pain(factory: Factory, **kw: Any) -> Resource:
    return factory.condition(ICD10, "M54.50", "Low back pain, unspecified", **kw)


def radiculopathy(factory: Factory, **kw: Any) -> Resource:
    return factory.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", **kw)


def thigh_pain(factory: Factory, **kw: Any) -> Resource:
    return factory.condition(ICD10, "M79.651", "Pain in right thigh", **kw)


def adult_with_knee_pain(factory: Factory, age: int = 50) -> list[Resource]:
    """A 50-year-old with active knee pain (side not stated): eligible, score 0."""
    return [factory.patient(age), knee_pain(factory)]


@pytest.fixture
def factory(today: date) -> Factory:
    return Factory(seed=7, today=today)


@dataclass
class HookCall:
    service_id: str
    context: dict[str, Any]
    prefetch: dict[str, Any]

    def run(self, model: Model, today: date, instance: str | None = "hook-instance-1") -> Evaluation:
        return evaluate(
            model,
            SERVICES_BY_ID[self.service_id],
            self.context,
            self.prefetch,
            CardOptions(DOCS_URL),
            today=today,
            instance=instance,
        )


@pytest.fixture
def card_options() -> CardOptions:
    return CardOptions(DOCS_URL)


@pytest.fixture
def patient_view_request(today: date) -> Callable[..., HookCall]:
    """A patient-view call for a synthetic profile."""

    def make(profile: str = "radiculopathy-knee-pain", seed: int = 0) -> HookCall:
        resources = generate(profile, seed=seed, today=today)
        patient_id = resources[0]["id"]
        return HookCall(
            "spine-knee-patient-view",
            {"userId": "Practitioner/dr-1", "patientId": patient_id},
            prefetch_for(resources),
        )

    return make


def knee_mri_order(factory: Factory) -> dict[str, Any]:
    return factory.service_request(SNOMED, "241641004", "MRI of knee", status="draft", days_ago=0)


def chest_xray_order(factory: Factory) -> dict[str, Any]:
    return factory.service_request(SNOMED, "399208008", "Plain chest X-ray", status="draft", days_ago=0)


@pytest.fixture
def order_select_request(today: date) -> Callable[..., HookCall]:
    """An order-select call: `orders` are drafted, `selected` (indexes into orders) are selected."""

    def make(
        profile: str = "radiculopathy-knee-pain",
        orders: tuple[Callable[[Factory], dict[str, Any]], ...] = (knee_mri_order,),
        selected: tuple[int, ...] = (0,),
    ) -> HookCall:
        resources = generate(profile, today=today)
        factory = Factory(seed=99, today=today, patient_id=resources[0]["id"])
        drafts = [make_order(factory) for make_order in orders]
        return HookCall(
            "spine-knee-order-select",
            {
                "userId": "Practitioner/dr-1",
                "patientId": resources[0]["id"],
                "selections": [f"ServiceRequest/{drafts[i]['id']}" for i in selected],
                "draftOrders": searchset(drafts) | {"type": "collection"},
            },
            prefetch_for(resources),
        )

    return make


@pytest.fixture
def order_sign_request(today: date) -> Callable[..., HookCall]:
    """An order-sign call with every order in `orders` drafted."""

    def make(
        profile: str = "radiculopathy-knee-pain",
        orders: tuple[Callable[[Factory], dict[str, Any]], ...] = (knee_mri_order,),
    ) -> HookCall:
        resources = generate(profile, today=today)
        factory = Factory(seed=99, today=today, patient_id=resources[0]["id"])
        drafts = [make_order(factory) for make_order in orders]
        return HookCall(
            "spine-knee-order-sign",
            {
                "userId": "Practitioner/dr-1",
                "patientId": resources[0]["id"],
                "draftOrders": searchset(drafts) | {"type": "collection"},
            },
            prefetch_for(resources),
        )

    return make
