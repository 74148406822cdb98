"""The assessment: how likely is this patient's knee pain to originate in the lumbar spine?

A transparent points rule with gates, not a validated predictor: each signal that fires adds its
weight from the model file, once per episode (the model's groups), the sum falls in a band, and the
gates hold the band at `unlikely` without a spinal finding and at `possible` without mid-lumbar
evidence. The result keeps every contribution with the resources and dates behind it, and what it set
aside (other side, differential), so a clinician can check the basis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from hooks.fhir import Evidence, Intervention, PatientRecord
from hooks.model import Model, Signal

Band = Literal["unlikely", "possible", "likely"]


@dataclass(frozen=True, slots=True)
class Contribution:
    """A signal that fired, with the evidence behind it and the points it added after the group rules
    (a signal counted with a stronger one of its episode adds nothing and names it in `counted_with`)."""

    signal: Signal
    evidence: tuple[Evidence, ...]
    points: float
    counted_with: str | None = None

    @property
    def weight(self) -> float:
        return self.signal.weight

    def references(self) -> list[str]:
        return list(dict.fromkeys(e.reference for e in self.evidence))

    def latest(self) -> date | None:
        dates = [e.date for e in self.evidence if e.date]
        return max(dates) if dates else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "signal": self.signal.key,
            "label": self.signal.label,
            "weight": self.signal.weight,
            "points": self.points,
            "evidence": self.signal.evidence,
            "references": self.references(),
            "codes": sorted({f"{e.coding.system}|{e.coding.code}" for e in self.evidence}),
        }
        if self.counted_with:
            out["counted_with"] = self.counted_with
        latest = self.latest()
        if latest:
            out["date"] = latest.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class NotCounted:
    """Evidence in a signal's value set that the rules set aside, shown so the clinician sees why."""

    evidence: Evidence
    reason: Literal["differential", "other side"]


@dataclass(frozen=True, slots=True)
class Suppression:
    reason: str
    reference: str


@dataclass(frozen=True)
class Assessment:
    model: dict[str, str]
    as_of: date
    patient_id: str | None
    patient_reference: str | None
    age: int | None
    eligible: bool
    ineligible_reason: str | None
    score: float
    band: Band | None
    findings: tuple[Contribution, ...]
    alternatives: tuple[Contribution, ...]
    missing_inputs: tuple[str, ...]
    notes: tuple[str, ...]
    suppressions: tuple[Suppression, ...]
    # red-flag diagnoses in the record (active or recent): never a routine card while any is there
    red_flags: tuple[Evidence, ...] = ()
    # the knee complaint that made the patient eligible
    knee_complaint: tuple[Evidence, ...] = ()
    not_counted: tuple[NotCounted, ...] = ()
    # why the band is lower than the score alone would give: "no spinal finding", "no mid-lumbar evidence"
    held_by: str | None = None

    @property
    def suppressed(self) -> bool:
        return bool(self.suppressions)

    @property
    def knee_laterality(self) -> str | None:
        return knee_side(self.knee_complaint)

    @property
    def red_flagged(self) -> bool:
        """Whether an eligible patient's record holds a red flag: a warning to assess urgently, no routine card."""
        return self.eligible and bool(self.red_flags)

    @property
    def actionable(self) -> bool:
        """Whether a routine card is warranted: eligible, no red flag, not already handled, and at least `possible`."""
        return self.eligible and not self.red_flags and not self.suppressed and self.band in ("possible", "likely")

    @property
    def contributions(self) -> tuple[Contribution, ...]:
        return self.findings + self.alternatives

    @property
    def main_finding(self) -> Contribution | None:
        counted = [c for c in self.findings if c.points > 0 and c.signal.spinal]
        return counted[0] if counted else None

    def summary(self) -> str:
        if not self.eligible:
            return f"Not assessed: {self.ineligible_reason}."
        counted = [c.signal.label.lower() for c in self.findings if c.points > 0]
        text = f"Spinal origin of knee pain {self.band}: " + (", ".join(counted) or "no spinal findings")
        if self.alternatives:
            text += "; alternatives: " + ", ".join(c.signal.label.lower() for c in self.alternatives if c.points)
        if self.held_by:
            text += f" (held at {self.band}: {self.held_by})"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary without patient identifiers (the caller pseudonymises the id)."""
        out: dict[str, Any] = {
            "model": self.model,
            "as_of": self.as_of.isoformat(),
            "eligible": self.eligible,
            "score": round(self.score, 4),
            "findings": [c.to_dict() for c in self.findings],
            "alternatives": [c.to_dict() for c in self.alternatives],
            "missing_inputs": list(self.missing_inputs),
            "notes": list(self.notes),
            "suppressions": [{"reason": s.reason, "reference": s.reference} for s in self.suppressions],
        }
        if self.red_flags:
            out["red_flags"] = [
                {"reference": e.reference, "code": f"{e.coding.system}|{e.coding.code}", "value_set": e.value_set}
                for e in self.red_flags
            ]
        if self.not_counted:
            out["not_counted"] = [
                {"reference": n.evidence.reference, "value_set": n.evidence.value_set, "reason": n.reason}
                for n in self.not_counted
            ]
        if self.knee_laterality:
            out["knee_side"] = self.knee_laterality
        if self.band:
            out["band"] = self.band
        if self.held_by:
            out["held_by"] = self.held_by
        if self.ineligible_reason:
            out["ineligible_reason"] = self.ineligible_reason
        return out


def knee_side(complaint: Iterable[Evidence]) -> str | None:
    """The side of the knee complaint: right, left, bilateral (both, or entries on each side), or unknown."""
    sides = {e.laterality for e in complaint if e.value_set != "pain_severity" and e.laterality}
    return sides.pop() if len(sides) == 1 else ("bilateral" if sides else None)


def age_on(birth_date: date, day: date) -> int:
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


class Assessor:
    """Applies one effective model to patient records."""

    def __init__(self, model: Model) -> None:
        self.model = model
        rules = model.condition_rules
        self._active = frozenset(rules["counted_clinical_statuses"])
        self._procedure_counted = frozenset(rules["counted_procedure_statuses"])
        self._uncounted_verification = frozenset(rules.get("uncounted_verification_statuses", ()))
        suppression = model.suppression
        self._suppress_active = frozenset(suppression["active_statuses"])
        self._suppress_completed = frozenset(suppression["completed_statuses"])
        self._suppress_days = int(suppression["completed_within_days"])
        self._surgery_days = int(suppression["spine_surgery_within_days"])
        self._spinal_reasons = frozenset(suppression["spinal_reason_value_sets"])
        terms = "|".join(re.escape(str(t).lower()) for t in suppression["spinal_reason_terms"])
        self._spinal_terms = re.compile(rf"\b(?:{terms})\b") if terms else None
        performer = model.referral.performer_type
        self._spine_performer = (model.index.family(performer.system), performer.code) if performer else None
        red_flags = model.document["red_flags"]
        self._red_flag_sets = tuple(red_flags["value_sets"])
        self._red_flag_days = int(red_flags["recent_within_days"])
        finding_sets = {vs for s in model.signals.values() if s.kind == "finding" for vs in (*s.value_sets, *s.requires_all)}
        self._finding_value_sets = frozenset(vs for vs in finding_sets | self._spinal_reasons if vs in model.value_sets)
        self._knee_value_sets = frozenset({"knee_pain", "knee_oa", "knee_injury", "knee_arthroplasty", "knee_body_site"})

    # -- evidence rules ------------------------------------------------------------------------

    def counts(self, evidence: Evidence, signal: Signal | None, today: date) -> bool:
        if not evidence.positive:
            return False
        if evidence.resource_type == "Condition":
            if evidence.status in self._active:
                return True
            window = signal.resolved_counts_within_days if signal else None
            return window is not None and evidence.date is not None and today - evidence.date <= timedelta(days=window)
        if evidence.resource_type == "Procedure":
            return evidence.status in self._procedure_counted
        return evidence.resource_type == "Observation"

    def _counted(self, record: PatientRecord, value_sets: Iterable[str], signal: Signal | None, today: date) -> list[Evidence]:
        found = [e for vs in value_sets for e in record.of(vs) if self.counts(e, signal, today)]
        return sorted(found, key=lambda e: (e.date or date.min, e.reference), reverse=True)

    # -- eligibility, red flags and suppression ------------------------------------------------

    def _red_flags(self, record: PatientRecord, today: date) -> list[Evidence]:
        """Red-flag diagnoses that are active, or were recorded recently whatever their status."""
        recent = today - timedelta(days=self._red_flag_days)
        found = [
            e
            for vs in self._red_flag_sets
            for e in record.of(vs)
            # refuted and entered-in-error diagnoses never reach the record
            if e.positive and (e.status in self._active or (e.date is not None and e.date >= recent))
        ]
        return sorted(dict.fromkeys(found), key=lambda e: (e.date or date.min, e.reference), reverse=True)

    def _knee_complaint(self, record: PatientRecord, today: date) -> tuple[list[Evidence], str | None]:
        """The counted knee complaint that makes the patient eligible, or why there is none."""
        pain = self._counted(record, ["knee_pain"], None, today)
        if pain:
            return pain, None
        oa = self._counted(record, ["knee_oa"], None, today)
        if oa:
            eligibility = self.model.eligibility
            since = today - timedelta(days=int(eligibility["pain_score_lookback_days"]))
            scores = [e for e in record.of("pain_severity") if e.value is not None and e.date is not None and e.date >= since]
            latest = max(scores, key=lambda e: e.date or date.min, default=None)
            if latest and latest.value is not None and latest.value >= float(eligibility["min_pain_score"]):
                return [*oa, latest], None
            return [], "knee osteoarthritis without recorded pain"
        if record.of("knee_pain"):
            return [], "no active knee complaint (knee pain resolved or inactive)"
        return [], "no active knee complaint"

    def _spinal_reason(self, item: Intervention, finding_refs: frozenset[str]) -> bool:
        if item.reason_value_sets & self._spinal_reasons or any(r in finding_refs for r in item.reason_references):
            return True
        return self._spinal_terms is not None and any(self._spinal_terms.search(t) for t in item.reason_texts)

    def is_spine_referral(self, item: Intervention, finding_refs: frozenset[str]) -> bool:
        if item.resource_type != "ServiceRequest":
            return False
        if item.own_suggestion or "spine_referral" in item.value_sets:
            return True
        if "referral" not in item.value_sets:
            return False
        if self._spine_performer and self._spine_performer in item.performer_types:
            return True
        return self._spinal_reason(item, finding_refs)

    def is_knee_directed(self, item: Intervention, finding_refs: frozenset[str] = frozenset()) -> bool:
        if "knee_order" in item.value_sets:
            return True
        knee_site = "knee_body_site" in item.body_site_value_sets
        if "joint_injection" in item.value_sets and knee_site:
            return True
        if "referral" in item.value_sets and not self.is_spine_referral(item, finding_refs):
            return knee_site or bool(item.reason_value_sets & self._knee_value_sets)
        return False

    def spine_references(self, record: PatientRecord) -> frozenset[str]:
        """References of the record's findings (any status), which a referral's reasonReference may name."""
        return frozenset(e.reference for vs in self._finding_value_sets for e in record.of(vs))

    def _suppressions(self, record: PatientRecord, today: date) -> list[Suppression]:
        finding_refs = self.spine_references(record)
        found: list[Suppression] = []
        for item in record.interventions:
            if self.is_spine_referral(item, finding_refs):
                what = "a spine referral"
            elif "lumbar_mri" in item.value_sets:
                what = "a lumbar spine MRI"
            else:
                continue
            if item.status in self._suppress_active:
                found.append(Suppression(f"{what} is already {item.status}", item.reference))
            elif (
                item.status in self._suppress_completed
                and item.date is not None
                and today - item.date <= timedelta(days=self._suppress_days)
            ):
                found.append(Suppression(f"{what} was completed on {item.date.isoformat()}", item.reference))
        since = today - timedelta(days=self._surgery_days)
        for e in record.of("spine_surgery"):
            if e.resource_type == "Procedure" and e.status in self._procedure_counted:
                # an undated spine operation is still spine care: no card rather than a redundant one
                if e.date is None or e.date >= since:
                    when = e.date.isoformat() if e.date else "an unrecorded date"
                    found.append(Suppression(f"spine surgery on {when}", e.reference))
            elif e.resource_type == "Condition" and e.status in self._active:
                found.append(Suppression("a condition after spine surgery is active", e.reference))
        return list(dict.fromkeys(found))

    # -- scoring ---------------------------------------------------------------------------------

    def _set_aside(self, evidence: Evidence, knee_side: str | None) -> NotCounted | None:
        if evidence.verification in self._uncounted_verification:
            return NotCounted(evidence, "differential")
        sides = ("right", "left")
        if knee_side in sides and evidence.laterality in sides and evidence.laterality != knee_side:
            return NotCounted(evidence, "other side")
        return None

    def _contributions(
        self, record: PatientRecord, knee_side: str | None, today: date
    ) -> tuple[list[Contribution], list[NotCounted]]:
        set_aside: dict[tuple[str, str], NotCounted] = {}
        usable: dict[str, list[Evidence]] = {}

        def evidence_of(value_set: str, signal: Signal) -> list[Evidence]:
            if not record.of(value_set):  # most value sets are empty in most records
                return []
            if value_set not in usable:
                kept = []
                for e in self._counted(record, [value_set], signal, today):
                    aside = self._set_aside(e, knee_side)
                    if aside is None:
                        kept.append(e)
                    else:
                        set_aside.setdefault((e.reference, e.value_set), aside)
                usable[value_set] = kept
            return usable[value_set]

        fired: dict[str, list[Evidence]] = {}
        for signal in self.model.signals.values():
            if signal.requires_all or signal.requires_any:
                continue
            evidence = [e for vs in signal.value_sets for e in evidence_of(vs, signal)]
            if evidence:
                fired[signal.key] = evidence
        # interactions depend on the signals above (or on value sets directly), never on each other
        for signal in self.model.signals.values():
            if not (signal.requires_all or signal.requires_any):
                continue

            def held(ref: str, signal: Signal = signal) -> list[Evidence]:
                return fired.get(ref) or (evidence_of(ref, signal) if ref in self.model.value_sets else [])

            all_of = [held(ref) for ref in signal.requires_all]
            if not all(all_of):
                continue
            any_of = [found for found in (held(ref) for ref in signal.requires_any) if found]
            if all(all_of) and (any_of or not signal.requires_any):
                fired[signal.key] = list(dict.fromkeys(e for found in [*all_of, *any_of] for e in found))
        return self._apply_groups(fired), sorted(set_aside.values(), key=lambda n: n.evidence.reference)

    def _apply_groups(self, fired: dict[str, list[Evidence]]) -> list[Contribution]:
        """Each finding counts once per episode: the group rules decide the points each fired signal adds."""
        signals = self.model.signals
        by_group: dict[str, list[Signal]] = {}
        for key in fired:
            by_group.setdefault(signals[key].group, []).append(signals[key])
        for members in by_group.values():
            members.sort(key=lambda s: (-abs(s.weight), s.key))
        out: list[Contribution] = []
        for group_key, members in by_group.items():
            group = self.model.groups[group_key]
            superseding = next((by_group[g][0] for g in group.superseded_by if g in by_group), None)
            remaining = group.cap
            for rank, signal in enumerate(members):
                evidence = tuple(fired[signal.key])
                if superseding is not None:
                    out.append(Contribution(signal, evidence, 0.0, superseding.key))
                elif group.rule == "strongest" and rank > 0:
                    out.append(Contribution(signal, evidence, 0.0, members[0].key))
                elif group.rule == "cap" and remaining is not None:
                    points = max(0.0, min(signal.weight, remaining))
                    remaining -= points
                    out.append(Contribution(signal, evidence, round(points, 6)))
                else:
                    out.append(Contribution(signal, evidence, signal.weight))
        return out

    def _band(self, score: float, contributions: list[Contribution]) -> tuple[Band, str | None]:
        bands = self.model.bands
        band: Band = "likely" if score >= bands["likely"] else "possible" if score >= bands["possible"] else "unlikely"
        fired = [c.signal for c in contributions]
        if band != "unlikely" and not any(getattr(s, self.model.gates["possible_requires"]) for s in fired):
            return "unlikely", "no spinal finding"
        if band == "likely" and not any(getattr(s, self.model.gates["likely_requires"]) for s in fired):
            return "possible", "no mid-lumbar evidence"
        return band, None

    def assess(self, record: PatientRecord, today: date) -> Assessment:
        notes = list(dict.fromkeys(record.notes))
        age = age_on(record.birth_date, today) if record.birth_date else None
        complaint: list[Evidence] = []
        eligible, reason = True, None
        if record.patient_reference is None:
            eligible, reason = False, "no Patient resource, so age is unknown"
        elif record.deceased:
            eligible, reason = False, "the patient is deceased"
        elif age is None:
            eligible, reason = False, "age unknown"
        elif age < int(self.model.eligibility["min_age_years"]):
            eligible, reason = False, f"under {self.model.eligibility['min_age_years']} years of age"
        else:
            complaint, reason = self._knee_complaint(record, today)
            eligible = bool(complaint)

        contributions, not_counted = self._contributions(record, knee_side(complaint), today)
        score = round(sum(c.points for c in contributions), 6)
        band: Band | None = None
        held_by = None
        if eligible:
            band, held_by = self._band(score, contributions)

        missing = tuple(
            expected.label for expected in self.model.expected_inputs if not any(record.of(vs) for vs in expected.value_sets)
        )
        ordered = sorted(contributions, key=lambda c: (-abs(c.points), -abs(c.weight), c.signal.key))
        return Assessment(
            model=self.model.identity(),
            as_of=today,
            patient_id=record.patient_id,
            patient_reference=record.patient_reference,
            age=age,
            eligible=eligible,
            ineligible_reason=reason,
            score=score,
            band=band,
            findings=tuple(c for c in ordered if c.signal.kind == "finding"),
            alternatives=tuple(c for c in ordered if c.signal.kind == "alternative"),
            missing_inputs=missing,
            notes=tuple(notes),
            suppressions=tuple(self._suppressions(record, today)),
            red_flags=tuple(self._red_flags(record, today)),
            knee_complaint=tuple(complaint),
            not_counted=tuple(not_counted),
            held_by=held_by,
        )


def assess(model: Model, record: PatientRecord, today: date) -> Assessment:
    return Assessor(model).assess(record, today)
