"""The CDS services: one declaration each, and the pipeline every caller runs.

Discovery is built from these declarations; the web service, the demo and the evaluation command
all call `evaluate`, so a card looks the same wherever it is produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from hooks.assessment import Assessment, Assessor
from hooks.cards import CardOptions, build_cards
from hooks.fhir import Intervention, read_orders, read_record
from hooks.model import Model

PREFETCH: Mapping[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "serviceRequests": "ServiceRequest?patient={{context.patientId}}",
}

# context fields each hook requires (CDS Hooks 2.0 hook definitions)
REQUIRED_CONTEXT: Mapping[str, tuple[str, ...]] = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
}


@dataclass(frozen=True)
class ServiceDeclaration:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str] = field(default_factory=lambda: dict(PREFETCH))
    usage_requirements: str | None = None

    def discovery(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
        }
        if self.usage_requirements:
            out["usageRequirements"] = self.usage_requirements
        return out


_USAGE = "For adult patients with knee pain; reads conditions, observations, procedures and service requests."

SERVICES: tuple[ServiceDeclaration, ...] = (
    ServiceDeclaration(
        id="spine-knee-patient-view",
        hook="patient-view",
        title="Spine-origin knee pain",
        description="Lists the findings that suggest a patient's knee pain is referred from the lumbar spine "
        "and suggests a spine evaluation to consider.",
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-order-select",
        hook="order-select",
        title="Spine-origin knee pain: knee order selected",
        description="When a knee-directed order is selected for a patient whose knee pain may come from the "
        "lumbar spine, suggests considering a spine evaluation first.",
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-order-sign",
        hook="order-sign",
        title="Spine-origin knee pain: knee order to sign",
        description="Before knee-directed orders are signed for a patient whose knee pain may come from the "
        "lumbar spine, suggests considering a spine evaluation first.",
        usage_requirements=_USAGE,
    ),
)
SERVICES_BY_ID: Mapping[str, ServiceDeclaration] = {s.id: s for s in SERVICES}


@dataclass(frozen=True)
class Evaluation:
    assessment: Assessment
    cards: list[dict[str, Any]]
    knee_orders: tuple[Intervention, ...] = ()

    def card_uuids(self) -> list[str]:
        return [c["uuid"] for c in self.cards]

    def suggestion_uuids(self) -> list[str]:
        return [s["uuid"] for c in self.cards for s in c.get("suggestions", [])]


def evaluate(
    model: Model,
    service: ServiceDeclaration,
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any],
    options: CardOptions,
    *,
    today: date,
    instance: str | None = None,
    notes: Sequence[str] = (),
) -> Evaluation:
    """One hook call: read the record, assess it, find drafted knee orders, build the cards."""
    patient_id = context.get("patientId")
    patient_id = patient_id if isinstance(patient_id, str) else None
    record = read_record(model, prefetch=prefetch, patient_id=patient_id)
    record.notes.extend(notes)
    assessor = Assessor(model)
    knee_orders: list[Intervention] = []
    if service.hook in ("order-select", "order-sign"):
        selections = context.get("selections") if service.hook == "order-select" else None
        orders, notes = read_orders(model, context.get("draftOrders"), selections if isinstance(selections, list) else None)
        record.notes.extend(notes)
        spine_refs = assessor.spine_references(record)
        knee_orders = [o for o in orders if assessor.is_knee_directed(o, spine_refs)]
    assessment = assessor.assess(record, today)
    user_id = context.get("userId")
    cards = build_cards(
        model,
        assessment,
        options,
        hook=service.hook,
        user_id=user_id if isinstance(user_id, str) else None,
        patient_id=patient_id,
        instance=instance,
        knee_orders=knee_orders,
    )
    return Evaluation(assessment, cards, tuple(knee_orders))
