"""The assessment: how likely is this patient's knee pain to originate in the lumbar spine?

A transparent points rule, not a validated predictor: each signal that fires adds its weight from
the model file, the sum falls in a band, and the result keeps every contribution with the resources
and dates behind it so a clinician can check the basis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from hooks.fhir import Evidence, Intervention, PatientRecord
from hooks.model import Model, Signal

Band = Literal["unlikely", "possible", "likely"]

_SPINE_VALUE_SETS = frozenset(
    {
        "low_back_pain",
        "lumbar_radiculopathy",
        "lumbar_stenosis",
        "lumbar_degeneration",
        "mid_lumbar_root_sign",
        "mid_lumbar_root_symptom",
    }
)
_KNEE_VALUE_SETS = frozenset({"knee_pain", "knee_oa", "knee_injury", "knee_arthroplasty", "knee_body_site"})


@dataclass(frozen=True, slots=True)
class Contribution:
    signal: Signal
    evidence: tuple[Evidence, ...]
    # for the age signal, which has no coded resource behind it
    patient_reference: str | None = None

    @property
    def weight(self) -> float:
        return self.signal.weight

    def references(self) -> list[str]:
        refs = [e.reference for e in self.evidence]
        if self.patient_reference:
            refs.append(self.patient_reference)
        return list(dict.fromkeys(refs))

    def latest(self) -> date | None:
        dates = [e.date for e in self.evidence if e.date]
        return max(dates) if dates else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "signal": self.signal.key,
            "label": self.signal.label,
            "weight": self.signal.weight,
            "evidence": self.signal.evidence,
            # the Patient reference would carry the patient id, which to_dict never includes
            "references": list(dict.fromkeys(e.reference for e in self.evidence)),
            "codes": sorted({f"{e.coding.system}|{e.coding.code}" for e in self.evidence}),
        }
        if self.patient_reference:
            out["derived_from"] = "Patient.birthDate"
        latest = self.latest()
        if latest:
            out["date"] = latest.isoformat()
        return out


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
    knee_laterality: str | None
    # red-flag diagnoses in the record (active or recent): never a routine card while any is there
    red_flags: tuple[Evidence, ...] = ()

    @property
    def suppressed(self) -> bool:
        return bool(self.suppressions)

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

    def summary(self) -> str:
        if not self.eligible:
            return f"Not assessed: {self.ineligible_reason}."
        parts = ", ".join(c.signal.label.lower() for c in self.findings) or "no spinal findings"
        text = f"Spinal origin of knee pain {self.band} (score {self.score:+.2f}): {parts}"
        if self.alternatives:
            text += "; alternatives: " + ", ".join(c.signal.label.lower() for c in self.alternatives)
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
        if self.band:
            out["band"] = self.band
        if self.ineligible_reason:
            out["ineligible_reason"] = self.ineligible_reason
        return out


def age_on(birth_date: date, day: date) -> int:
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


class Assessor:
    """Applies one effective model to patient records."""

    def __init__(self, model: Model) -> None:
        self.model = model
        rules = model.condition_rules
        self._active = frozenset(rules["counted_clinical_statuses"])
        self._procedure_counted = frozenset(rules["counted_procedure_statuses"])
        suppression = model.suppression
        self._suppress_active = frozenset(suppression["active_statuses"])
        self._suppress_completed = frozenset(suppression["completed_statuses"])
        self._suppress_days = int(suppression["completed_within_days"])
        performer = model.referral.performer_type
        self._spine_performer = (model.index.family(performer.system), performer.code) if performer else None
        red_flags = model.document["red_flags"]
        self._red_flag_sets = tuple(red_flags["value_sets"])
        self._red_flag_days = int(red_flags["recent_within_days"])

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

    def _knee_complaint(self, record: PatientRecord, today: date) -> tuple[bool, str | None]:
        if self._counted(record, ["knee_pain"], None, today):
            return True, None
        if self._counted(record, ["knee_oa"], None, today):
            eligibility = self.model.eligibility
            since = today - timedelta(days=int(eligibility["pain_score_lookback_days"]))
            scores = [e for e in record.of("pain_severity") if e.value is not None and e.date is not None and e.date >= since]
            latest = max(scores, key=lambda e: e.date or date.min, default=None)
            if latest and latest.value is not None and latest.value >= float(eligibility["min_pain_score"]):
                return True, None
            return False, "knee osteoarthritis without recorded pain"
        if record.of("knee_pain"):
            return False, "no active knee complaint (knee pain resolved or inactive)"
        return False, "no active knee complaint"

    def is_spine_referral(self, item: Intervention, spine_refs: frozenset[str]) -> bool:
        if item.resource_type != "ServiceRequest":
            return False
        if "spine_referral" in item.value_sets:
            return True
        if "referral" not in item.value_sets:
            return False
        if self._spine_performer and self._spine_performer in item.performer_types:
            return True
        return bool(item.reason_value_sets & _SPINE_VALUE_SETS) or any(r in spine_refs for r in item.reason_references)

    def is_knee_directed(self, item: Intervention, spine_refs: frozenset[str] = frozenset()) -> bool:
        if "knee_order" in item.value_sets:
            return True
        knee_site = "knee_body_site" in item.body_site_value_sets
        if "joint_injection" in item.value_sets and knee_site:
            return True
        if "referral" in item.value_sets and not self.is_spine_referral(item, spine_refs):
            return knee_site or bool(item.reason_value_sets & _KNEE_VALUE_SETS)
        return False

    @staticmethod
    def spine_references(record: PatientRecord) -> frozenset[str]:
        """References of the record's spinal findings (any status), which a referral's reasonReference may name."""
        return frozenset(e.reference for vs in _SPINE_VALUE_SETS for e in record.of(vs))

    def _suppressions(self, record: PatientRecord, today: date) -> list[Suppression]:
        spine_refs = self.spine_references(record)
        found: list[Suppression] = []
        for item in record.interventions:
            if self.is_spine_referral(item, spine_refs):
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
        return found

    # -- scoring ---------------------------------------------------------------------------------

    def _contributions(self, record: PatientRecord, age: int | None, today: date) -> list[Contribution]:
        fired: dict[str, Contribution] = {}
        for signal in self.model.signals.values():
            if signal.age_over is not None:
                if age is not None and age > signal.age_over:
                    fired[signal.key] = Contribution(signal, (), record.patient_reference)
                continue
            if signal.requires_all or signal.requires_any:
                continue
            evidence = self._counted(record, signal.value_sets, signal, today)
            if evidence:
                fired[signal.key] = Contribution(signal, tuple(evidence))
        # interactions depend on the signals above, never on each other
        for signal in self.model.signals.values():
            if not (signal.requires_all or signal.requires_any):
                continue
            all_of = [fired.get(k) for k in signal.requires_all]
            any_of = [fired[k] for k in signal.requires_any if k in fired]
            if all(all_of) and (any_of or not signal.requires_any):
                evidence = [e for c in [*all_of, *any_of] if c for e in c.evidence]
                fired[signal.key] = Contribution(signal, tuple(dict.fromkeys(evidence)))
        return list(fired.values())

    def assess(self, record: PatientRecord, today: date) -> Assessment:
        notes = list(dict.fromkeys(record.notes))
        age = age_on(record.birth_date, today) if record.birth_date else None
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
            eligible, reason = self._knee_complaint(record, today)

        contributions = self._contributions(record, age, today)
        score = round(sum(c.weight for c in contributions), 6)
        band: Band | None = None
        if eligible:
            band = (
                "likely"
                if score >= self.model.bands["likely"]
                else "possible"
                if score >= self.model.bands["possible"]
                else "unlikely"
            )

        missing = tuple(
            expected.label for expected in self.model.expected_inputs if not any(record.of(vs) for vs in expected.value_sets)
        )
        knee = self._counted(record, ["knee_pain", "knee_oa"], None, today)
        sides = {e.laterality for e in knee if e.laterality}
        laterality = sides.pop() if len(sides) == 1 else ("bilateral" if sides else None)

        by_weight = sorted(contributions, key=lambda c: (-abs(c.weight), c.signal.key))
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
            findings=tuple(c for c in by_weight if c.signal.kind == "finding"),
            alternatives=tuple(c for c in by_weight if c.signal.kind == "alternative"),
            missing_inputs=missing,
            notes=tuple(notes),
            suppressions=tuple(self._suppressions(record, today)),
            knee_laterality=laterality,
            red_flags=tuple(self._red_flags(record, today)),
        )


def assess(model: Model, record: PatientRecord, today: date) -> Assessment:
    return Assessor(model).assess(record, today)
