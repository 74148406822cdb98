"""CDS Hooks 2.0 cards from an assessment.

The card shows the basis of its suggestion so the clinician can check it independently: every
finding with the resource and date it came from, what it contributed and why, the alternatives,
the inputs that were missing. Wording says "consider"; `critical` is never used.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hooks.assessment import Assessment, Contribution
from hooks.fhir import Evidence, Intervention
from hooks.model import Model

OVERRIDE_SYSTEM = "urn:spine-cds:override-reason"
TOPIC = {"system": "urn:spine-cds:topic", "code": "spine-origin-knee-pain", "display": "Spine-origin knee pain"}
OVERRIDE_REASONS: tuple[dict[str, str], ...] = (
    {"system": OVERRIDE_SYSTEM, "code": "already-evaluated", "display": "Already evaluated by a spine specialist"},
    {"system": OVERRIDE_SYSTEM, "code": "knee-cause-confirmed", "display": "Knee cause confirmed"},
    {"system": OVERRIDE_SYSTEM, "code": "patient-declines", "display": "Patient declines"},
    {"system": OVERRIDE_SYSTEM, "code": "not-clinically-relevant", "display": "Not clinically relevant"},
)
# overrides that mean "do not ask again for a while" (see the service's snooze setting)
SNOOZING_OVERRIDES = frozenset({"already-evaluated", "patient-declines"})

_CARD_NAMESPACE = uuid.UUID("6f1c2a4e-8f55-4d0e-9a0b-2b1c7d7e5a10")
_INDICATOR = {"possible": "info", "likely": "warning"}
_EVIDENCE_WORDS = {
    "strong": "strong",
    "moderate": "moderate",
    "weak": "weak",
    "hypothesis": "hypothesis-level",
    "expert": "expert judgement",
}
_REASON_TYPES = ("Condition", "Observation")  # what ServiceRequest.reasonReference may point to


@dataclass(frozen=True)
class CardOptions:
    docs_url: str
    source_label: str = "Spine-origin knee pain assessment"


def prune(value: Any) -> Any:
    """Drop None, empty strings, lists and objects: CDS Hooks clients choke on nulls."""
    if isinstance(value, dict):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        items = [prune(v) for v in value]
        return [v for v in items if v not in (None, "", [], {})]
    return value


def _uuid(instance: str | None, *parts: str) -> str:
    if instance is None:
        return str(uuid.uuid4())
    # stable per hook call, so a retried call shows the same uuids and feedback still matches
    return str(uuid.uuid5(_CARD_NAMESPACE, "|".join((instance, *parts))))


def _md(text: str) -> str:
    """Escape table-breaking characters in text taken from records."""
    return text.replace("|", "\\|").replace("\n", " ")


def _finding_rows(model: Model, contributions: Sequence[Contribution]) -> list[str]:
    rows = ["| Finding | Recorded in | Date | Points | Basis |", "|---|---|---|---|---|"]
    for c in contributions:
        signal = c.signal
        refs = c.references()
        shown = ", ".join(f"`{r}`" for r in refs[:3]) + (f" and {len(refs) - 3} more" if len(refs) > 3 else "")
        if c.patient_reference and not c.evidence:
            shown = "age from the patient's birth date"
        latest = c.latest()
        when = latest.isoformat() if latest else ("at assessment" if c.patient_reference and not c.evidence else "not recorded")
        figure = str(signal.ratio) if signal.ratio else "no published figure"
        sources = "; ".join(model.short_citations[s] for s in signal.sources)
        basis = f"{_EVIDENCE_WORDS[signal.evidence]} evidence, {figure}. {signal.why} ({sources})"
        rows.append(f"| {_md(signal.label)} | {shown} | {when} | {signal.weight:+.2f} | {_md(basis)} |")
    return rows


def detail_markdown(model: Model, assessment: Assessment, orders: Sequence[Intervention] = ()) -> str:
    lines: list[str] = []
    if orders:
        listed = ", ".join(f"{o.coding.display or o.coding.code} (`{o.reference}`)" for o in orders)
        lines += [f"**Knee-directed order drafted:** {_md(listed)}.", ""]
    bands = model.bands
    lines += [
        f"**Assessment: {assessment.band}** spinal origin (score {assessment.score:+.2f}; "
        f"`possible` from {bands['possible']:g}, `likely` from {bands['likely']:g}). "
        "An evidence-based rule, not a validated predictor: review the findings below.",
        "",
    ]
    if assessment.findings:
        lines += ["**Findings that point to the lumbar spine**", "", *_finding_rows(model, assessment.findings), ""]
    if assessment.alternatives:
        lines += ["**Alternative explanations found**", "", *_finding_rows(model, assessment.alternatives), ""]
        for c in assessment.alternatives:
            if c.signal.advice:
                lines += [f"- Consider: {c.signal.advice}"]
        lines.append("")
    if assessment.missing_inputs:
        lines += ["**Expected inputs not in the record**", "", *(f"- {m}" for m in assessment.missing_inputs), ""]
    if assessment.notes:
        lines += ["**Data quality**", "", *(f"- {_md(n)}" for n in assessment.notes[:10]), ""]
        if len(assessment.notes) > 10:
            lines.append(f"- and {len(assessment.notes) - 10} more notes")
            lines.append("")
    lines += [_NO_RED_FLAG_SCREENING, ""]
    identity = assessment.model
    lines.append(f"Model `{identity['id']}` {identity['version']} (`{identity['hash'][:19]}`).")
    return "\n".join(lines)


_NO_RED_FLAG_SCREENING = (
    "This assessment does not screen for red flags (cauda equina, infection, fracture, malignancy, "
    "new weakness): assess those as usual."
)


def _red_flag_name(evidence: Evidence) -> str:
    return evidence.coding.display or evidence.coding.code


def red_flag_card(assessment: Assessment, options: CardOptions, *, hook: str, instance: str | None) -> dict[str, Any]:
    """The one card for a record that holds a red flag: it names the diagnosis and asks for urgent
    assessment; no spine-origin assessment and no referral suggestion while the red flag stands."""
    first = _red_flag_name(assessment.red_flags[0])
    summary = f"Red flag in the record: {first}. Needs urgent assessment"
    if len(summary) >= 140:
        summary = "Red flag in the record: needs urgent assessment"
    rows = [
        f"- {_md(_red_flag_name(e))} (`{e.coding.code}`, {e.status or 'status not recorded'}"
        f"{', ' + e.date.isoformat() if e.date else ''}; `{e.reference}`)"
        for e in assessment.red_flags
    ]
    detail = "\n".join(
        [
            "**Red flag recorded**",
            "",
            *rows,
            "",
            "This needs urgent assessment. This service does not triage red flags, and it makes no "
            "spine-origin suggestion while one is recorded.",
        ]
    )
    card = {
        "uuid": _uuid(instance, hook, "red-flag"),
        "summary": summary,
        "detail": detail,
        "indicator": "warning",
        "source": {"label": options.source_label, "url": options.docs_url, "topic": TOPIC},
        "links": [{"label": "How this assessment works", "url": options.docs_url, "type": "absolute"}],
    }
    pruned: dict[str, Any] = prune(card)
    return pruned


def referral_resource(model: Model, assessment: Assessment, *, patient_reference: str, user_id: str | None) -> dict[str, Any]:
    """The draft ServiceRequest a suggestion creates."""
    referral = model.referral
    reasons = [
        ref
        for c in assessment.findings
        for ref in c.references()
        if ref.split("/", 1)[0] in _REASON_TYPES and not ref.startswith("urn:")
    ]
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [referral.code.as_fhir()], "text": referral.code.display or "Referral for spine evaluation"},
        "subject": {"reference": patient_reference},
        "reasonReference": [{"reference": r} for r in dict.fromkeys(reasons)],
        "note": [{"text": f"Suggested for lumbar spine evaluation of knee pain. {assessment.summary()}"}],
    }
    if referral.performer_type:
        resource["performerType"] = {"coding": [referral.performer_type.as_fhir()]}
    # a referral is requested by a clinician; a patient-facing app's user is left for the EHR to fill
    if user_id and user_id.startswith(("Practitioner/", "PractitionerRole/")):
        resource["requester"] = {"reference": user_id}
    pruned: dict[str, Any] = prune(resource)
    return pruned


def build_cards(
    model: Model,
    assessment: Assessment,
    options: CardOptions,
    *,
    hook: str,
    user_id: str | None = None,
    patient_id: str | None = None,
    instance: str | None = None,
    knee_orders: Sequence[Intervention] = (),
) -> list[dict[str, Any]]:
    """Zero or one card: a red-flag warning when the record holds one, else none unless the assessment is
    actionable; for order hooks only when a knee order is drafted."""
    is_order_hook = hook in ("order-select", "order-sign")
    if is_order_hook and not knee_orders:
        return []
    if assessment.red_flagged:
        return [red_flag_card(assessment, options, hook=hook, instance=instance)]
    if not assessment.actionable or assessment.band is None:
        return []
    patient_reference = f"Patient/{patient_id}" if patient_id else assessment.patient_reference or "Patient/unknown"
    if is_order_hook:
        summary = "Knee order drafted: knee pain may be referred from the lumbar spine. Consider spine evaluation first"
    else:
        summary = "Knee pain may be referred from the lumbar spine: consider spine evaluation"
    card_key = hook  # order-select and order-sign may share a hookInstance: their uuids must differ
    suggestion = {
        "label": "Consider a referral for lumbar spine evaluation",
        "uuid": _uuid(instance, card_key, "suggestion"),
        "isRecommended": False,
        "actions": [
            {
                "type": "create",
                "description": "Create a draft referral for lumbar spine evaluation",
                "resource": referral_resource(model, assessment, patient_reference=patient_reference, user_id=user_id),
            }
        ],
    }
    card = {
        "uuid": _uuid(instance, card_key),
        "summary": summary,
        "detail": detail_markdown(model, assessment, knee_orders if is_order_hook else ()),
        "indicator": _INDICATOR[assessment.band],
        "source": {"label": options.source_label, "url": options.docs_url, "topic": TOPIC},
        "suggestions": [suggestion],
        "selectionBehavior": "at-most-one",
        "overrideReasons": list(OVERRIDE_REASONS),
        "links": [{"label": "How this assessment works", "url": options.docs_url, "type": "absolute"}],
    }
    return [prune(card)]
