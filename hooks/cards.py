"""CDS Hooks 2.0 cards from an assessment.

The card shows the basis of its suggestion so the clinician can check it independently, in seconds:
the knee complaint and each finding as the record has it (display and code, statuses, side, age), the
points it added, the alternatives and the examinations missing; why each weight is what it is lives on
the model page the card links to. Wording says "consider"; `critical` is never used. Only a `likely`
card offers the referral; a `possible` one advises examining first.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from hooks.assessment import Assessment, Contribution
from hooks.fhir import SUGGESTION_IDENTIFIER_SYSTEM, Evidence, Intervention
from hooks.model import Model

OVERRIDE_SYSTEM = "urn:spine-cds:override-reason"
# topic codes are static and alphanumeric: Epic keys its memory of a clinician's override on them (at most
# 100 characters, letters and digits); a red flag has its own, so overriding the routine card never hides one
TOPIC = {"system": "urn:spine-cds:topic", "code": "SpineOriginKneePain", "display": "Spine-origin knee pain"}
RED_FLAG_TOPIC = {"system": "urn:spine-cds:topic", "code": "SpineOriginRedFlag", "display": "Red flag recorded"}
OVERRIDE_REASONS: tuple[dict[str, str], ...] = (
    {"system": OVERRIDE_SYSTEM, "code": "already-evaluated", "display": "Already evaluated by a spine specialist"},
    {"system": OVERRIDE_SYSTEM, "code": "knee-cause-confirmed", "display": "Knee cause confirmed"},
    {"system": OVERRIDE_SYSTEM, "code": "patient-declines", "display": "Patient declines"},
    {"system": OVERRIDE_SYSTEM, "code": "not-clinically-relevant", "display": "Not clinically relevant"},
)

# what each override reason is in the HL7 Non-Adherence Reason categories (CodeSystem
# http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes, CDS Hooks IG 3.0.0-ballot, ValueSet
# non-adherence-reason-category: its six codes), for committees comparing alerts across systems. Three of ours
# say the referral does not apply to this patient (done already, the knee explains the pain, not relevant). A
# patient declining is "does not align with patient preferences or values" (the patient prefers an alternative);
# the CodeSystem's separate "patient refuses/declines (no context given)" concept sits outside the six
# categories and is marked there as not preferred
NON_ADHERENCE_SYSTEM = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
NON_ADHERENCE_CATEGORIES = (
    "cds-not-applicable",
    "cds-suboptimal-context",
    "recipient-disagrees-evidence",
    "recipient-concerns-outcomes",
    "does-not-align-preferences",
    "not-convenient-feasible",
)
NON_ADHERENCE_CATEGORY: Mapping[str, str] = {
    "already-evaluated": "cds-not-applicable",
    "knee-cause-confirmed": "cds-not-applicable",
    "patient-declines": "does-not-align-preferences",
    "not-clinically-relevant": "cds-not-applicable",
}

_CARD_NAMESPACE = uuid.UUID("6f1c2a4e-8f55-4d0e-9a0b-2b1c7d7e5a10")
_INDICATOR = {"possible": "info", "likely": "warning"}
_REASON_TYPES = ("Condition", "Observation")  # what ServiceRequest.reasonReference may point to


DetailFormat = Literal["markdown", "plain"]


@dataclass(frozen=True)
class CardOptions:
    """How cards are written for one caller: its EHR's profile and the site's settings for that issuer."""

    docs_url: str
    source_label: str = "Spine-origin knee pain assessment"
    detail_format: DetailFormat = "markdown"
    # codings added beside the model's referral code on the drafted ServiceRequest (a site's orderable)
    order_codings: tuple[Mapping[str, str], ...] = ()
    # URL prefixes a link may start with; empty: any. Links elsewhere are left off, not sent to be dropped
    link_allowlist: tuple[str, ...] = ()
    # a systemAction noting the assessment on each drafted knee ServiceRequest
    annotate_orders: bool = False

    def allows_link(self, url: str) -> bool:
        return not self.link_allowlist or url.startswith(self.link_allowlist)


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


_FAMILY_NAMES = {"icd10cm": "ICD-10-CM", "snomed": "SNOMED CT", "loinc": "LOINC", "cpt": "CPT"}


def _code(model: Model, evidence: Evidence) -> str:
    family = _FAMILY_NAMES.get(model.index.family(evidence.coding.system))
    return f"{family} {evidence.coding.code}" if family else evidence.coding.code


def _entry_age(model: Model, when: date | None, today: date) -> str:
    if when is None:
        return "undated"
    days = (today - when).days
    if days < 0:
        return f"dated {when.isoformat()}"
    text = f"{days} d ago" if days < 62 else f"{days // 30} mo ago" if days < 730 else f"{days // 365} y ago"
    return text + (" (old)" if days > int(model.detail["old_entry_days"]) else "")


def _side(evidence: Evidence, knee_side: str | None) -> str:
    side = evidence.laterality
    if side is None:
        return "side not stated"
    if side == "bilateral":
        return "both sides"
    if knee_side in ("right", "left"):
        return f"{side} ({'same as' if side == knee_side else 'opposite'} knee)"
    return side


def _entry(model: Model, evidence: Evidence, assessment: Assessment) -> str:
    """One record entry as the record has it: its words and code, statuses, side and age."""
    status = evidence.status or "no status"
    if evidence.verification:
        status += f"/{evidence.verification}"
    when = _entry_age(model, evidence.date, assessment.as_of)
    return f"{_md(evidence.name)} ({_code(model, evidence)}), {status}, {_side(evidence, assessment.knee_laterality)}, {when}"


def _is_interaction(c: Contribution) -> bool:
    return bool(c.signal.requires_all or c.signal.requires_any)


def _contribution_lines(model: Model, contributions: Sequence[Contribution], assessment: Assessment) -> list[str]:
    """One line per record entry, each entry once; an interaction adds its points to the entry it brings
    (thigh symptoms for the L3/L4 picture) or a line of its own; what a stronger signal counted adds nothing.
    A captioned group (the seed signs) is one line: its entries, their points together, and its caption."""
    shown: set[str] = set()
    lines: list[str] = []
    captioned: dict[str, list[Contribution]] = {}
    # the record's entries first, then what interactions add on top of them
    for c in sorted(contributions, key=_is_interaction):
        if model.groups[c.signal.group].caption:
            captioned.setdefault(c.signal.group, []).append(c)
            continue
        new = [e for e in c.evidence if e.reference not in shown]
        shown.update(e.reference for e in c.evidence)
        interaction = _is_interaction(c)
        if interaction and not c.points:
            continue
        points = f"counted with {model.signals[c.counted_with].label.lower()}" if c.counted_with else f"{c.points:+.2f}"
        if interaction:
            head = f"{_entry(model, new[0], assessment)}; {c.signal.label}" if new else c.signal.label
            lines.append(f"- {head} [{points}]")
        elif new:
            more = f" (+{len(new) - 1} more)" if len(new) > 1 else ""
            lines.append(f"- {_entry(model, new[0], assessment)}{more} [{points}]")
    for group, members in captioned.items():
        entries = dict.fromkeys(e for c in members for e in c.evidence if e.reference not in shown)
        named = "; ".join(f"{_md(e.name)} ({_code(model, e)})" for e in entries)
        total = sum(c.points for c in members)
        lines.append(f"- {named} [{total:+.2f} together: {model.groups[group].caption}]")
    return lines


def detail_markdown(
    model: Model,
    assessment: Assessment,
    options: CardOptions,
    orders: Sequence[Intervention] = (),
    heading: str = "Knee-directed order drafted",
) -> str:
    """A card a clinician checks in seconds: the record's own entries, one line each; the reasons for
    each weight and the citations are on the model page the card links to."""
    limit = int(model.detail["max_findings_shown"])
    lines: list[str] = []
    if orders:
        listed = ", ".join(o.coding.display or o.coding.code for o in orders)
        lines += [f"**{heading}:** {_md(listed)}.", ""]
    complaint = [e for e in assessment.knee_complaint if e.value_set != "pain_severity"]
    if complaint:
        lines.append(f"**Knee complaint:** {_entry(model, complaint[0], assessment)}.")
    findings = [c for c in assessment.findings if c.evidence]
    if findings:
        rows = _contribution_lines(model, findings, assessment)
        # a blank line before a list: not every Markdown renderer lets a list interrupt a paragraph
        lines += ["", "**For a lumbar source:**", "", *rows[:limit]]
        if len(rows) > limit:
            lines.append(f"- and {len(rows) - limit} more")
    if assessment.not_counted:
        aside = "; ".join(f"{_md(n.evidence.name)} ({n.reason})" for n in assessment.not_counted[:3])
        lines += ["", f"**Not counted:** {aside}."]
    if assessment.alternatives:
        lines += ["", "**Against:**", "", *_contribution_lines(model, assessment.alternatives, assessment)[:3]]
        lines += [f"- Consider: {c.signal.advice}" for c in assessment.alternatives if c.signal.advice]
    if assessment.missing_inputs:
        lines += ["", f"**Not in the record:** {'; '.join(assessment.missing_inputs)}."]
    if assessment.notes:
        lines += ["", f"**Data quality:** {len(assessment.notes)} note(s); the first: {_md(assessment.notes[0])}"]
    if assessment.band == "possible":
        lines += ["", str(model.detail["examine_first"]).strip()]
    identity = assessment.model
    lines += [
        "",
        f"**{assessment.band.capitalize() if assessment.band else ''}**: a rule, not a validated predictor. "
        f"{_NO_RED_FLAG_SCREENING} [Why, sources]({options.docs_url}), model {identity['version']}.",
    ]
    return "\n".join(lines)


_NO_RED_FLAG_SCREENING = "It does not screen for red flags."


def red_flag_card(assessment: Assessment, options: CardOptions, *, hook: str, instance: str | None) -> dict[str, Any]:
    """The one card for a record that holds a red flag: it names the diagnosis and asks for urgent
    assessment; no spine-origin assessment and no referral suggestion while the red flag stands."""
    first = assessment.red_flags[0].name
    summary = f"Red flag in the record: {first}. Needs urgent assessment"
    if len(summary) >= 140:
        summary = "Red flag in the record: needs urgent assessment"
    rows = [
        f"- {_md(e.name)} (`{e.coding.code}`, {e.status or 'status not recorded'}"
        f"{'/' + e.verification if e.verification else ''}{', ' + e.date.isoformat() if e.date else ''})"
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
        "source": {"label": options.source_label, "url": options.docs_url, "topic": RED_FLAG_TOPIC},
        "links": [{"label": "How this assessment works", "url": options.docs_url, "type": "absolute"}],
    }
    return shaped(card, options)


_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")


def plain_text(markdown: str) -> str:
    """The detail for a client that shows it as plain text: no emphasis marks, links as 'text (url)'."""
    text = _LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", markdown)
    return text.replace("**", "").replace("\\|", "|")


def shaped(card: dict[str, Any], options: CardOptions) -> dict[str, Any]:
    """The card as the caller's client takes it: detail format, links only where its allow-list lets them go."""
    card["links"] = [link for link in card.get("links", []) if options.allows_link(link["url"])]
    source = card.get("source") or {}
    if "url" in source and not options.allows_link(source["url"]):
        del source["url"]
    if options.detail_format == "plain" and "detail" in card:
        card["detail"] = plain_text(card["detail"])
    pruned: dict[str, Any] = prune(card)
    return pruned


_TRIGGER_HEADS = {"orders": "Knee order drafted", "appointments": "Knee procedure booked"}


def _summary(assessment: Assessment, *, trigger: str) -> str:
    """The card's one line, about this patient: the knee side and the record's own main spinal finding."""
    knee = {"right": "Right knee pain", "left": "Left knee pain", "bilateral": "Knee pain on both sides"}.get(
        assessment.knee_laterality or "", "Knee pain"
    )
    counted = [c for c in sorted(assessment.findings, key=_is_interaction) if c.points > 0 and c.signal.spinal]
    entries = [e.name for c in counted for e in c.evidence[:1]]
    names = list(dict.fromkeys(entries))[:2]
    finding = " and ".join(names).lower() if names else "spinal findings"
    if trigger in _TRIGGER_HEADS:
        head, tail = f"{_TRIGGER_HEADS[trigger]}; {knee.lower()}", "consider the lumbar spine first"
    elif assessment.band == "likely":
        head, tail = knee, "consider a lumbar spine source"
    else:
        head, tail = knee, "consider examining for a lumbar spine source"
    text = f"{head} with {finding}: {tail}"
    return text if len(text) < 140 else f"{head}: {tail}"


def referral_resource(
    model: Model,
    assessment: Assessment,
    *,
    patient_reference: str,
    user_id: str | None,
    suggestion_uuid: str,
    extra_codings: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The draft ServiceRequest a suggestion creates: what a spine clinic needs to triage it."""
    referral = model.referral
    complaint = [e.reference for e in assessment.knee_complaint if e.value_set != "pain_severity"]
    spinal = [ref for c in assessment.findings if c.signal.spinal for ref in c.references()]
    reasons = [ref for ref in dict.fromkeys([*complaint, *spinal]) if ref.split("/", 1)[0] in _REASON_TYPES]
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        # once signed, the identifier tells the service this is its own suggestion, whatever the EHR keeps
        "identifier": [{"system": SUGGESTION_IDENTIFIER_SYSTEM, "value": suggestion_uuid}],
        "status": "draft",
        "intent": "order",
        "priority": referral.priority,
        "category": [{"coding": [referral.category.as_fhir()]}] if referral.category else None,
        # a site's own orderable beside the standard code: Epic places a specific order only from its coding
        "code": {"coding": [referral.code.as_fhir(), *map(dict, extra_codings)], "text": referral.text},
        "subject": {"reference": patient_reference},
        "reasonReference": [{"reference": r} for r in reasons],
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
    trigger: str = "record",
) -> list[dict[str, Any]]:
    """Zero or one card: a red-flag warning when the record holds one, else none unless the assessment is
    actionable. `knee_orders` are what the hook concerns (drafted orders, appointments being booked), named
    in the card; the caller decides whether the hook fires at all. Only a `likely` card offers the
    referral, as one suggestion with one action (the shape every known client accepts); a `possible` one
    advises examining first."""
    if assessment.red_flagged:
        return [red_flag_card(assessment, options, hook=hook, instance=instance)]
    if not assessment.actionable or assessment.band is None:
        return []
    patient_reference = f"Patient/{patient_id}" if patient_id else assessment.patient_reference or "Patient/unknown"
    card_key = hook  # order-select and order-sign may share a hookInstance: their uuids must differ
    heading = _TRIGGER_DETAIL.get(trigger)
    card: dict[str, Any] = {
        "uuid": _uuid(instance, card_key),
        "summary": _summary(assessment, trigger=trigger),
        "detail": detail_markdown(model, assessment, options, knee_orders if heading else (), heading or ""),
        "indicator": _INDICATOR[assessment.band],
        "source": {"label": options.source_label, "url": options.docs_url, "topic": TOPIC},
        "overrideReasons": list(OVERRIDE_REASONS),
        "links": [{"label": "How this assessment works", "url": options.docs_url, "type": "absolute"}],
    }
    if assessment.band == "likely":
        suggestion_uuid = _uuid(instance, card_key, "suggestion")
        resource = referral_resource(
            model,
            assessment,
            patient_reference=patient_reference,
            user_id=user_id,
            suggestion_uuid=suggestion_uuid,
            extra_codings=options.order_codings,
        )
        card["suggestions"] = [
            {
                "label": "Consider a referral for lumbar spine evaluation",
                "uuid": suggestion_uuid,
                "isRecommended": False,
                # Epic shows the action's description, not the label: it says the whole thing
                "actions": [
                    {
                        "type": "create",
                        "description": "Consider a referral for lumbar spine evaluation (a draft for you to review)",
                        "resource": resource,
                    }
                ],
            }
        ]
        # "any" is the one value every known client (Epic among them) accepts; with one suggestion it
        # allows nothing "at-most-one" would not
        card["selectionBehavior"] = "any"
    return [shaped(card, options)]


_TRIGGER_DETAIL = {"orders": "Knee-directed order drafted", "appointments": "Knee procedure being booked"}


def order_annotations(
    assessment: Assessment, orders: Sequence[Intervention], drafts: Sequence[Mapping[str, Any]], assessment_id: str
) -> list[dict[str, Any]]:
    """systemActions noting the assessment on each drafted knee ServiceRequest (CDS Hooks 2.0 lets a service
    update a draft resource of the call's context). The note names the assessment and its band, nothing else."""
    wanted = {o.reference for o in orders if o.resource_type == "ServiceRequest"}
    actions: list[dict[str, Any]] = []
    for draft in drafts:
        if draft.get("resourceType") != "ServiceRequest" or f"ServiceRequest/{draft.get('id')}" not in wanted:
            continue
        resource = copy.deepcopy(dict(draft))
        notes = resource.get("note")
        notes = notes if isinstance(notes, list) else []
        text = f"Spine-origin knee pain assessment {assessment_id}: {assessment.band}; consider the lumbar spine first."
        resource["note"] = [*notes, {"text": text}]
        description = "Note the spine-origin knee pain assessment on the drafted order"
        actions.append({"type": "update", "description": description, "resource": resource})
    return actions
