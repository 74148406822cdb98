"""The CDS services: one declaration each, the prefetch they ask for, and the pipeline every caller runs.

Discovery is built from these declarations and the site's settings (which services are enabled, which
prefetch templates it overrides); the web service, the demo and the evaluation command all call
`evaluate`, so a card looks the same wherever it is produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal
from urllib.parse import quote

from hooks.assessment import Assessment, Assessor
from hooks.cards import CardOptions, build_cards, order_annotations
from hooks.fhir import RECORD_TYPES, Intervention, PatientRecord, read_orders, read_record
from hooks.model import Coding, Model

# FHIR observation-category codes (terminology.hl7.org/CodeSystem/observation-category)
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# Observations the model reads, searched by their codes: US Core and Epic refuse an Observation search by
# patient alone (it needs `code` or `category`). Examinations are also searched by category, because a
# site may record them under local codes it has not mapped yet.
OBSERVATION_VALUE_SETS = ("pain_severity", "strength_exam", "femoral_stretch_exam", "patellar_reflex_exam")
OBSERVATION_CATEGORIES = ("exam",)
# one page of a search; the fetch path reads at most FETCH_MAX_PAGES of them
PAGE_SIZE = 100

Trigger = Literal["record", "orders", "problems", "appointments"]


def _code_list(model: Model) -> str:
    systems = {family: uris[0] for family, uris in (model.document.get("systems") or {}).items() if uris}
    tokens = [
        f"{systems.get(family, family)}|{code}"
        for value_set in OBSERVATION_VALUE_SETS
        if value_set in model.value_sets
        for family, code in model.index.codes_for(value_set)
    ]
    return ",".join(quote(t, safe=":/|.-") for t in dict.fromkeys(tokens))


def default_prefetch(model: Model) -> dict[str, str]:
    """The prefetch templates every major EHR can fill: each search bounded by `_count`, Observations by
    code and by category (never by patient alone)."""
    patient = "patient={{context.patientId}}"
    templates = {RECORD_TYPES["Patient"]: "Patient/{{context.patientId}}"}
    for resource_type, key in RECORD_TYPES.items():
        if resource_type not in ("Patient", "Observation"):
            templates[key] = f"{resource_type}?{patient}&_count={PAGE_SIZE}"
    codes = _code_list(model)
    if codes:
        templates[RECORD_TYPES["Observation"]] = f"Observation?{patient}&code={codes}&_count={PAGE_SIZE}"
    for category in OBSERVATION_CATEGORIES:
        templates[f"{category}Observations"] = f"Observation?{patient}&category={category}&_count={PAGE_SIZE}"
    return templates


@dataclass(frozen=True)
class ServiceDeclaration:
    id: str
    hook: str
    title: str
    description: str
    # context fields the hook definition (CDS Hooks 2.0 hooks library) makes REQUIRED
    required_context: tuple[str, ...]
    # what in the context must concern the knee for a card: the record alone, drafted orders, problems
    # being added, or appointments being booked
    trigger: Trigger = "record"
    # the context field holding the FHIR Bundle the trigger reads
    trigger_field: str | None = None
    # the context field naming which of the trigger's orders the clinician selected (order-select): only those count
    selections_field: str | None = None
    enabled_by_default: bool = True
    # the card is for clinicians: a patient or relative using the EHR's app (appointment-book) gets none
    clinician_users_only: bool = False
    usage_requirements: str | None = None

    def discovery(self, prefetch: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(prefetch),
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
        required_context=("userId", "patientId"),
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-order-select",
        hook="order-select",
        title="Spine-origin knee pain: knee order selected",
        description="When a knee-directed order is selected for a patient whose knee pain may come from the "
        "lumbar spine, suggests considering a spine evaluation first.",
        required_context=("userId", "patientId", "selections", "draftOrders"),
        trigger="orders",
        trigger_field="draftOrders",
        selections_field="selections",
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-order-sign",
        hook="order-sign",
        title="Spine-origin knee pain: knee order to sign",
        description="Before knee-directed orders are signed for a patient whose knee pain may come from the "
        "lumbar spine, suggests considering a spine evaluation first.",
        required_context=("userId", "patientId", "draftOrders"),
        trigger="orders",
        trigger_field="draftOrders",
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-encounter-start",
        hook="encounter-start",
        title="Spine-origin knee pain: visit started",
        description="Once per visit, lists the findings that suggest a patient's knee pain is referred from the "
        "lumbar spine and suggests a spine evaluation to consider.",
        required_context=("userId", "patientId", "encounterId"),
        enabled_by_default=False,
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-problem-added",
        hook="problem-list-item-create",
        title="Spine-origin knee pain: knee problem added",
        description="When knee pain or knee osteoarthritis is added to the problem list of a patient whose knee "
        "pain may come from the lumbar spine, suggests considering a spine evaluation.",
        required_context=("userId", "patientId", "conditions"),
        trigger="problems",
        trigger_field="conditions",
        enabled_by_default=False,
        usage_requirements=_USAGE,
    ),
    ServiceDeclaration(
        id="spine-knee-appointment-book",
        hook="appointment-book",
        title="Spine-origin knee pain: knee procedure booked",
        description="When a knee-procedure appointment is booked for a patient whose knee pain may come from the "
        "lumbar spine, suggests considering a spine evaluation first.",
        required_context=("userId", "patientId", "appointments"),
        trigger="appointments",
        trigger_field="appointments",
        enabled_by_default=False,
        clinician_users_only=True,
        usage_requirements=_USAGE,
    ),
)
SERVICES_BY_ID: Mapping[str, ServiceDeclaration] = {s.id: s for s in SERVICES}
DEFAULT_ENABLED: tuple[str, ...] = tuple(s.id for s in SERVICES if s.enabled_by_default)
# context fields each hook requires (CDS Hooks 2.0 hook definitions)
REQUIRED_CONTEXT: Mapping[str, tuple[str, ...]] = {s.hook: s.required_context for s in SERVICES}
_CLINICIAN_USERS = ("Practitioner/", "PractitionerRole/")


@dataclass(frozen=True)
class Catalog:
    """The services a site offers and the prefetch they ask for: the model's templates with the site's
    overrides (a key set to None is not asked for; the fetch path then does not read it either)."""

    services: tuple[ServiceDeclaration, ...]
    prefetch: Mapping[str, str]

    @classmethod
    def build(
        cls, model: Model, enabled: Sequence[str] = DEFAULT_ENABLED, overrides: Mapping[str, str | None] | None = None
    ) -> Catalog:
        templates: dict[str, str] = default_prefetch(model)
        for key, template in (overrides or {}).items():
            if template is None:
                templates.pop(key, None)
            else:
                templates[key] = template
        return cls(tuple(s for s in SERVICES if s.id in enabled), templates)

    def get(self, service_id: str) -> ServiceDeclaration | None:
        return next((s for s in self.services if s.id == service_id), None)

    def discovery(self) -> list[dict[str, Any]]:
        return [s.discovery(self.prefetch) for s in self.services]


# why a call got its cards or none: the decision log records one of these with every answered call
# (the service adds "snoozed", and a failed call's error code), and the auditor pages explain it
REASONS: Mapping[str, str] = {
    "red-flag": "A red flag in the record: one warning asking for urgent assessment, no routine card.",
    "spinal-origin-likely": "Mid-lumbar evidence in the record: a card that suggests a spine referral.",
    "spinal-origin-possible": "Spinal evidence in the record: a card that advises examining first.",
    "not-eligible": "The patient is outside the model's population (the assessment says why).",
    "in-spine-care": "The patient is already in spine care (a spine referral, lumbar imaging or spine surgery).",
    "no-spinal-evidence": "The record holds no spinal evidence enough for a card.",
    "not-knee-directed": "None of the orders or appointments in the call concerns the knee.",
    "no-knee-problem-added": "The problem being added is not knee pain or knee osteoarthritis.",
    "not-a-clinician": "The user is not a clinician (a patient or relative using the EHR's app): no card.",
}


def card_reason(assessment: Assessment, cards: Sequence[Mapping[str, Any]]) -> str:
    """Which rule made the cards, or why the assessment gave none."""
    if cards:
        return "red-flag" if assessment.red_flagged else f"spinal-origin-{assessment.band}"
    if not assessment.eligible:
        return "not-eligible"
    if assessment.suppressed:
        return "in-spine-care"
    return "no-spinal-evidence"


@dataclass(frozen=True)
class Evaluation:
    assessment: Assessment
    cards: list[dict[str, Any]]
    reason: str
    knee_orders: tuple[Intervention, ...] = ()
    system_actions: list[dict[str, Any]] = field(default_factory=list)

    def card_uuids(self) -> list[str]:
        return [c["uuid"] for c in self.cards]

    def suggestion_uuids(self) -> list[str]:
        return [s["uuid"] for c in self.cards for s in c.get("suggestions", [])]


def _bundle_resources(bundle: Any) -> list[dict[str, Any]]:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    found = (e.get("resource") for e in (entries if isinstance(entries, list) else ()) if isinstance(e, dict))
    return [r for r in found if isinstance(r, dict)]


def _knee_triggers(
    model: Model, service: ServiceDeclaration, context: Mapping[str, Any], assessor: Assessor, record: PatientRecord
) -> tuple[list[Intervention], list[str]]:
    """What in the context concerns the knee for this hook, and notes on what could not be read."""
    if service.trigger == "orders":
        selections = context.get(service.selections_field) if service.selections_field else None
        orders, notes = read_orders(model, context.get("draftOrders"), selections if isinstance(selections, list) else None)
        spine_refs = assessor.spine_references(record)
        return [o for o in orders if assessor.is_knee_directed(o, spine_refs)], notes
    if service.trigger == "appointments":
        return knee_appointments(model, _bundle_resources(context.get("appointments"))), []
    return [], []


def _codings(resource: Mapping[str, Any], *fields: str) -> list[tuple[str, str, str | None]]:
    found: list[tuple[str, str, str | None]] = []
    for name in fields:
        value = resource.get(name)
        for concept in value if isinstance(value, list) else [value]:
            codings = concept.get("coding") if isinstance(concept, dict) else None
            for c in codings if isinstance(codings, list) else ():
                if isinstance(c, dict) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
                    display = c.get("display")
                    found.append((c["system"], c["code"], display if isinstance(display, str) else None))
    return found


# appointments being booked that a clinician could still redirect (FHIR R4 AppointmentStatus)
_BOOKABLE = ("proposed", "pending", "booked", "waitlist")


def knee_appointments(model: Model, appointments: Sequence[Mapping[str, Any]]) -> list[Intervention]:
    """The appointments being booked for a knee procedure: a service type, appointment type or reason coded in
    the model's knee orders."""
    found: list[Intervention] = []
    for resource in appointments:
        if resource.get("resourceType") != "Appointment" or resource.get("status") not in _BOOKABLE:
            continue
        for system, code, display in _codings(resource, "serviceType", "appointmentType", "reasonCode"):
            value_sets = model.index.lookup(system, code)
            if "knee_order" in value_sets:
                found.append(
                    Intervention(
                        reference=f"Appointment/{resource.get('id') or '(no id)'}",
                        resource_type="Appointment",
                        coding=Coding(system, code, display),
                        value_sets=value_sets,
                        status=str(resource["status"]),
                        date=None,
                    )
                )
                break
    return found


KNEE_PROBLEMS = frozenset({"knee_pain", "knee_oa"})


# a problem recorded as a mistake or ruled out is not knee pain being added (FHIR R4 condition-ver-status)
_NOT_A_PROBLEM = ("entered-in-error", "refuted")


def adds_knee_problem(model: Model, conditions: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a problem being added is knee pain or knee osteoarthritis."""
    return any(
        model.index.lookup(system, code) & KNEE_PROBLEMS
        for condition in conditions
        if not {code for _, code, _ in _codings(condition, "verificationStatus")} & set(_NOT_A_PROBLEM)
        for system, code, _ in _codings(condition, "code")
    )


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
    """One hook call: read the record, assess it, find what the hook concerns, build the cards."""
    patient_id = context.get("patientId")
    patient_id = patient_id if isinstance(patient_id, str) else None
    added: list[dict[str, Any]] = []
    if service.trigger == "problems":
        # the problems being added are part of the record the assessment reads
        added = [r for r in _bundle_resources(context.get("conditions")) if r.get("resourceType") == "Condition"]
    record = read_record(model, added, prefetch=prefetch, patient_id=patient_id)
    record.notes.extend(notes)
    assessor = Assessor(model)
    triggers, trigger_notes = _knee_triggers(model, service, context, assessor, record)
    record.notes.extend(trigger_notes)
    assessment = assessor.assess(record, today)
    user_id = context.get("userId")
    user_id = user_id if isinstance(user_id, str) else None
    if service.clinician_users_only and not (user_id or "").startswith(_CLINICIAN_USERS):
        return Evaluation(assessment, [], "not-a-clinician")
    if service.trigger == "problems" and not adds_knee_problem(model, added):
        return Evaluation(assessment, [], "no-knee-problem-added")
    if service.trigger in ("orders", "appointments") and not triggers:
        return Evaluation(assessment, [], "not-knee-directed")
    cards = build_cards(
        model,
        assessment,
        options,
        hook=service.hook,
        user_id=user_id,
        patient_id=patient_id,
        instance=instance,
        knee_orders=triggers,
        trigger=service.trigger,
    )
    actions: list[dict[str, Any]] = []
    if options.annotate_orders and service.trigger == "orders" and cards and not assessment.red_flagged:
        actions = order_annotations(assessment, triggers, _bundle_resources(context.get("draftOrders")), cards[0]["uuid"])
    return Evaluation(assessment, cards, card_reason(assessment, cards), tuple(triggers), actions)
