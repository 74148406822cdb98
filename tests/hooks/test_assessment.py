"""The assessment: eligibility, signals, status rules, alternatives, missing inputs, suppression."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from hooks.assessment import Assessment, Contribution, age_on, assess
from hooks.cards import CardOptions, build_cards
from hooks.fhir import read_record
from hooks.model import Model, load_model
from hooks.synthetic import ICD10, LOINC, SNOMED, Factory, Resource, generate
from tests.hooks.conftest import (
    CPT,
    DOCS_URL,
    SITE_SYSTEM,
    adult_with_knee_pain,
    assess_resources,
    knee_pain,
    low_back_pain,
    patient_born,
    radiculopathy,
    thigh_pain,
)

FAMILY_SYSTEMS = {"icd10cm": ICD10, "snomed": SNOMED}
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
SPINE_PERFORMER = {"system": SNOMED, "code": "722172003", "display": "Spine surgery service"}


def by_key(assessment: Assessment) -> dict[str, Contribution]:
    return {c.signal.key: c for c in assessment.contributions}


def years_before(day: date, years: int) -> date:
    return day.replace(year=day.year - years)


# -- eligibility ---------------------------------------------------------------------------------


class TestEligibility:
    def test_exactly_18_is_eligible(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(model, [patient_born(factory, years_before(today, 18)), knee_pain(factory)], today)
        assert a.age == 18
        assert a.eligible
        assert a.band == "unlikely"

    def test_17_years_364_days_is_ineligible(self, model: Model, today: date, factory: Factory) -> None:
        born = years_before(today, 18) + timedelta(days=1)
        a = assess_resources(model, [patient_born(factory, born), knee_pain(factory)], today)
        assert a.age == 17
        assert not a.eligible
        assert a.band is None
        assert a.ineligible_reason is not None and "18" in a.ineligible_reason

    def test_min_age_comes_from_model(self, model: Model) -> None:
        assert model.eligibility["min_age_years"] == 18

    def test_no_patient_is_ineligible(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(model, [knee_pain(factory), radiculopathy(factory), low_back_pain(factory)], today)
        assert not a.eligible
        assert a.age is None
        assert a.ineligible_reason is not None and "Patient" in a.ineligible_reason
        assert not a.actionable

    def test_patient_without_birth_date_is_ineligible(self, model: Model, today: date, factory: Factory) -> None:
        patient = factory.patient(50)
        del patient["birthDate"]
        a = assess_resources(model, [patient, knee_pain(factory)], today)
        assert not a.eligible
        assert a.ineligible_reason == "age unknown"

    @pytest.mark.parametrize("clinical", ["active", "recurrence", "relapse"])
    def test_active_knee_pain_is_eligible(self, model: Model, today: date, factory: Factory, clinical: str) -> None:
        a = assess_resources(model, [factory.patient(40), knee_pain(factory, clinical=clinical)], today)
        assert a.eligible
        assert a.ineligible_reason is None

    @pytest.mark.parametrize("clinical", ["resolved", "inactive", "remission"])
    def test_resolved_knee_pain_is_ineligible(self, model: Model, today: date, factory: Factory, clinical: str) -> None:
        a = assess_resources(model, [factory.patient(40), knee_pain(factory, clinical=clinical), radiculopathy(factory)], today)
        assert not a.eligible
        assert a.ineligible_reason is not None and "resolved" in a.ineligible_reason

    def test_no_knee_complaint_is_ineligible(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(model, [factory.patient(40), radiculopathy(factory), low_back_pain(factory)], today)
        assert not a.eligible
        assert a.ineligible_reason == "no active knee complaint"

    def pain_score(self, factory: Factory, value: float, days_ago: int, status: str = "final") -> Resource:
        return factory.observation(LOINC, "72514-3", "Pain severity 0-10", value=value, days_ago=days_ago, status=status)

    @pytest.mark.parametrize(
        ("value", "days_ago", "eligible"),
        [
            (1, 20, True),  # at the minimum score
            (6, 365, True),  # at the edge of the lookback
            (6, 366, False),  # too old
            (0, 20, False),  # no pain
        ],
    )
    def test_knee_oa_counts_with_recent_pain_score(
        self, model: Model, today: date, factory: Factory, value: float, days_ago: int, eligible: bool
    ) -> None:
        resources = [
            factory.patient(66),
            factory.condition(ICD10, "M17.11", "Unilateral primary osteoarthritis, right knee", onset_days_ago=900),
            self.pain_score(factory, value, days_ago),
        ]
        a = assess_resources(model, resources, today)
        assert a.eligible is eligible
        if not eligible:
            assert a.ineligible_reason == "knee osteoarthritis without recorded pain"

    def test_knee_oa_latest_pain_score_decides(self, model: Model, today: date, factory: Factory) -> None:
        resources = [
            factory.patient(66),
            factory.condition(SNOMED, "239873007", "Osteoarthritis of knee"),
            self.pain_score(factory, 7, 200),
            self.pain_score(factory, 0, 10),
        ]
        assert not assess_resources(model, resources, today).eligible

    def test_knee_oa_preliminary_pain_score_ignored(self, model: Model, today: date, factory: Factory) -> None:
        resources = [
            factory.patient(66),
            factory.condition(SNOMED, "239873007", "Osteoarthritis of knee"),
            self.pain_score(factory, 8, 5, status="preliminary"),
        ]
        assert not assess_resources(model, resources, today).eligible

    def test_knee_oa_without_score_is_ineligible(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(
            model, [factory.patient(66), factory.condition(SNOMED, "239873007", "Osteoarthritis of knee")], today
        )
        assert not a.eligible

    def test_age_on_birthdays(self) -> None:
        assert age_on(date(2000, 11, 24), date(2026, 11, 24)) == 26
        assert age_on(date(2000, 11, 25), date(2026, 11, 24)) == 25
        assert age_on(date(2000, 2, 29), date(2026, 3, 1)) == 26


# -- signals -------------------------------------------------------------------------------------


def _coded_cases() -> list[Any]:
    """(signal, value set, system, code) for every ICD-10-CM and SNOMED code behind a signal in the model file."""
    model = load_model()
    cases = []
    for key, signal in model.signals.items():
        for value_set in signal.value_sets:
            raw = model.document["value_sets"][value_set]
            for family, system in FAMILY_SYSTEMS.items():
                for code in [*raw.get(family, []), *raw.get(f"{family}_prefixes", [])]:
                    cases.append(pytest.param(key, value_set, system, str(code), id=f"{key}-{family}-{code}"))
    return cases


CODED_CASES = _coded_cases()


def test_every_coded_signal_has_cases_in_both_forms_where_the_model_has_them(model: Model) -> None:
    covered = {(p.values[0], p.values[2]) for p in CODED_CASES}
    for key, signal in model.signals.items():
        for value_set in signal.value_sets:
            raw = model.document["value_sets"][value_set]
            for family, system in FAMILY_SYSTEMS.items():
                if raw.get(family) or raw.get(f"{family}_prefixes"):
                    assert (key, system) in covered
    # the signals that the model codes in both ICD-10-CM and SNOMED CT
    both = {k for k in model.signals if (k, ICD10) in covered and (k, SNOMED) in covered}
    assert {"low_back_pain", "lumbar_radiculopathy", "lumbar_stenosis", "bunion", "knee_oa", "hip_oa"} <= both


@pytest.mark.parametrize(("signal_key", "value_set", "system", "code"), CODED_CASES)
def test_signal_fires_from_condition(
    model: Model, today: date, factory: Factory, signal_key: str, value_set: str, system: str, code: str
) -> None:
    condition = factory.condition(system, code, f"{value_set} {code}", onset_days_ago=30)
    a = assess_resources(model, [*adult_with_knee_pain(factory), condition], today)
    fired = by_key(a)
    assert set(fired) == {signal_key}
    contribution = fired[signal_key]
    assert contribution.weight == model.signals[signal_key].weight
    assert a.score == pytest.approx(model.signals[signal_key].weight)
    assert contribution.references() == [f"Condition/{condition['id']}"]
    assert contribution.latest() == today - timedelta(days=30)
    assert contribution.evidence[0].value_set == value_set


def test_band_thresholds_read_from_the_model_file(today: date, factory: Factory, tmp_path: Path) -> None:
    """A model file with other thresholds moves the bands: the score exactly at `likely` is likely."""
    text = resources.files("hooks").joinpath("data", "spine-knee-model.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    records = [*adult_with_knee_pain(factory), radiculopathy(factory), thigh_pain(factory)]  # score 3.0, mid-lumbar
    for likely, band in [(3.0, "likely"), (3.1, "possible")]:
        document["bands"] = {"possible": 0.5, "likely": likely}
        path = tmp_path / f"model-{likely}.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        a = assess_resources(load_model(path=path), records, today)
        assert a.score == 3.0
        assert a.band == band


# -- status rules --------------------------------------------------------------------------------


class TestStatusRules:
    @pytest.mark.parametrize(
        ("clinical", "counts"),
        [
            ("active", True),
            ("recurrence", True),
            ("relapse", True),
            ("resolved", False),
            ("inactive", False),
            ("remission", False),
        ],
    )
    def test_clinical_status(self, model: Model, today: date, factory: Factory, clinical: str, counts: bool) -> None:
        a = assess_resources(model, [*adult_with_knee_pain(factory), low_back_pain(factory, clinical=clinical)], today)
        assert ("low_back_pain" in by_key(a)) is counts

    @pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
    def test_refuted_or_entered_in_error_ignored(self, model: Model, today: date, factory: Factory, verification: str) -> None:
        resources = [*adult_with_knee_pain(factory), radiculopathy(factory, verification=verification)]
        a = assess_resources(model, resources, today)
        assert by_key(a) == {}
        # ignored entirely: not even an entry set aside
        assert a.not_counted == ()

    @pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
    def test_refuted_knee_pain_does_not_make_eligible(
        self, model: Model, today: date, factory: Factory, verification: str
    ) -> None:
        a = assess_resources(model, [factory.patient(50), knee_pain(factory, verification=verification)], today)
        assert not a.eligible

    @pytest.mark.parametrize(
        ("clinical", "onset_days_ago", "counts"),
        [
            ("active", 2000, True),
            ("resolved", 30, True),
            ("resolved", 365, True),
            ("resolved", 366, False),
            ("inactive", 200, True),
            ("remission", 400, False),
        ],
    )
    def test_knee_injury_window(
        self, model: Model, today: date, factory: Factory, clinical: str, onset_days_ago: int, counts: bool
    ) -> None:
        assert model.signals["recent_knee_injury"].resolved_counts_within_days == 365
        injury = factory.condition(
            SNOMED, "444470001", "Injury of anterior cruciate ligament", clinical=clinical, onset_days_ago=onset_days_ago
        )
        a = assess_resources(model, [*adult_with_knee_pain(factory), injury], today)
        assert ("recent_knee_injury" in by_key(a)) is counts

    def test_resolved_finding_without_window_does_not_count(self, model: Model, today: date, factory: Factory) -> None:
        """Only signals with resolved_counts_within_days let a resolved Condition count, however recent."""
        a = assess_resources(
            model, [*adult_with_knee_pain(factory), radiculopathy(factory, clinical="resolved", onset_days_ago=1)], today
        )
        assert by_key(a) == {}

    @pytest.mark.parametrize(
        ("status", "counts"),
        [
            ("final", True),
            ("amended", True),
            ("corrected", True),
            ("preliminary", False),
            ("registered", False),
            ("cancelled", False),
        ],
    )
    def test_observation_status(self, model: Model, today: date, factory: Factory, status: str, counts: bool) -> None:
        finding = factory.observation(SNOMED, "279039007", "Low back pain", status=status)
        a = assess_resources(model, [*adult_with_knee_pain(factory), finding], today)
        assert ("low_back_pain" in by_key(a)) is counts

    def test_condition_without_clinical_status_read_as_active(self, model: Model, today: date, factory: Factory) -> None:
        condition = radiculopathy(factory)
        del condition["clinicalStatus"]
        a = assess_resources(model, [*adult_with_knee_pain(factory), condition], today)
        assert "lumbar_radiculopathy" in by_key(a)
        assert any("no clinical status" in n for n in a.notes)


# -- interactions and age ------------------------------------------------------------------------


class TestBunionInteraction:
    def bunion(self, factory: Factory) -> Resource:
        return factory.condition(ICD10, "M20.11", "Hallux valgus (acquired), right foot", onset_days_ago=1500)

    def test_bunion_alone(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(model, [*adult_with_knee_pain(factory), self.bunion(factory)], today)
        assert set(by_key(a)) == {"bunion"}
        assert a.score == pytest.approx(model.signals["bunion"].weight)

    @pytest.mark.parametrize("back_signal", load_model().signals["bunion_with_back_problem"].requires_any)
    def test_bunion_with_back_problem(self, model: Model, today: date, factory: Factory, back_signal: str) -> None:
        value_set = model.signals[back_signal].value_sets[0]
        raw = model.document["value_sets"][value_set]
        back = factory.condition(ICD10, str(raw["icd10cm"][0]), back_signal)
        bunion = self.bunion(factory)
        a = assess_resources(model, [*adult_with_knee_pain(factory), bunion, back], today)
        fired = by_key(a)
        assert set(fired) == {"bunion", back_signal, "bunion_with_back_problem"}
        expected = sum(model.signals[k].weight for k in fired)
        assert a.score == pytest.approx(expected)
        interaction = fired["bunion_with_back_problem"].references()
        assert set(interaction) == {f"Condition/{bunion['id']}", f"Condition/{back['id']}"}

    def test_bunion_with_resolved_back_pain_only(self, model: Model, today: date, factory: Factory) -> None:
        resources = [*adult_with_knee_pain(factory), self.bunion(factory), low_back_pain(factory, clinical="resolved")]
        assert set(by_key(assess_resources(model, resources, today))) == {"bunion"}


class TestAge:
    """Age over 70 was a stenosis-syndrome ratio, not evidence about knee pain: age adds nothing, either way."""

    @pytest.mark.parametrize("age", [45, 59, 71, 90])
    def test_age_alone_adds_nothing(self, model: Model, today: date, factory: Factory, age: int) -> None:
        a = assess_resources(model, [patient_born(factory, years_before(today, age)), knee_pain(factory)], today)
        assert (a.score, a.contributions, a.band) == (0, (), "unlikely")

    def test_age_never_adds_on_top_of_stenosis(self, model: Model, today: date, factory: Factory) -> None:
        stenosis = factory.condition(ICD10, "M48.062", "Spinal stenosis, lumbar region with neurogenic claudication")
        old = assess_resources(model, [*adult_with_knee_pain(factory, age=82), stenosis], today)
        young = assess_resources(model, [*adult_with_knee_pain(factory, age=45), stenosis], today)
        assert old.score == young.score == model.signals["lumbar_stenosis"].weight
        assert not any(s.get("age_over") for s in model.document["signals"].values())


# -- alternatives ----------------------------------------------------------------------------------


class TestAlternatives:
    @pytest.mark.parametrize(
        ("key", "make"),
        [
            ("recent_knee_injury", lambda f: f.condition(ICD10, "S83.511A", "Sprain of ACL of right knee", onset_days_ago=40)),
            ("knee_oa", lambda f: f.condition(SNOMED, "239873007", "Osteoarthritis of knee")),
            ("hip_oa", lambda f: f.condition(ICD10, "M16.11", "Unilateral primary osteoarthritis, right hip")),
            ("knee_arthroplasty", lambda f: f.procedure(SNOMED, "609588000", "Total knee replacement", days_ago=400)),
        ],
    )
    def test_alternative_lowers_score(self, model: Model, today: date, factory: Factory, key: str, make: Any) -> None:
        base = [*adult_with_knee_pain(factory), radiculopathy(factory), low_back_pain(factory)]
        before = assess_resources(model, base, today)
        resource = make(factory)
        after = assess_resources(model, [*base, resource], today)
        assert model.signals[key].kind == "alternative"
        assert model.signals[key].weight < 0
        assert after.score == pytest.approx(before.score + model.signals[key].weight)
        assert [c.signal.key for c in after.alternatives] == [key]
        assert after.alternatives[0].references() == [f"{resource['resourceType']}/{resource['id']}"]
        assert key not in {c.signal.key for c in after.findings}

    @pytest.mark.parametrize(
        ("status", "counts"),
        [("completed", True), ("in-progress", True), ("not-done", False), ("preparation", False), ("entered-in-error", False)],
    )
    def test_knee_arthroplasty_procedure_status(
        self, model: Model, today: date, factory: Factory, status: str, counts: bool
    ) -> None:
        tkr = factory.procedure(SNOMED, "609588000", "Total knee replacement", status=status)
        a = assess_resources(model, [*adult_with_knee_pain(factory), tkr], today)
        assert ("knee_arthroplasty" in by_key(a)) is counts

    def test_knee_arthroplasty_cpt(self, model: Model, today: date, factory: Factory) -> None:
        tkr = factory.procedure(CPT, "27447", "Total knee arthroplasty")
        assert "knee_arthroplasty" in by_key(assess_resources(model, [*adult_with_knee_pain(factory), tkr], today))

    def test_hip_oa_card_advises_hip_when_still_possible(self, model: Model, today: date, factory: Factory) -> None:
        resources = [
            *adult_with_knee_pain(factory),
            radiculopathy(factory),
            thigh_pain(factory),
            factory.condition(ICD10, "M16.11", "Unilateral primary osteoarthritis, right hip"),
        ]
        a = assess_resources(model, resources, today)
        assert a.band == "possible"
        (card,) = build_cards(model, a, CardOptions(DOCS_URL), hook="patient-view", patient_id=factory.patient_id)
        advice = model.signals["hip_oa"].advice
        assert advice is not None
        consider = [line for line in card["detail"].splitlines() if line.startswith("- Consider:")]
        assert consider == [f"- Consider: {advice}"]
        assert "hip" in consider[0].lower()
        assert "alternatives: hip osteoarthritis" in a.summary()

    @pytest.mark.parametrize(
        ("system", "code"), [(ICD10, "M25.551"), (ICD10, "M25.552"), (ICD10, "M25.559"), (SNOMED, "49218002")]
    )
    def test_hip_pain_is_not_hip_disease(self, model: Model, today: date, factory: Factory, system: str, code: str) -> None:
        a = assess_resources(model, [*adult_with_knee_pain(factory), factory.condition(system, code, "Hip pain")], today)
        assert a.alternatives == ()


# -- contributions and missing inputs --------------------------------------------------------------


class TestContributionsAndMissingInputs:
    def test_contributions_carry_references_and_dates(self, model: Model, today: date) -> None:
        resources = generate("radiculopathy-knee-pain", today=today)
        a = assess_resources(model, resources, today)
        ids = {r["id"] for r in resources}
        assert a.findings
        for c in a.contributions:
            for ref in c.references():
                kind, _, rid = ref.partition("/")
                assert kind in {"Condition", "Observation", "Procedure", "Patient"}
                assert rid in ids
            assert c.latest() is not None
            d = c.to_dict()
            assert d["date"] == c.latest().isoformat()  # type: ignore[union-attr]
            assert d["weight"] == c.weight
        dates = {c.signal.key: c.latest() for c in a.findings}
        assert dates["lumbar_radiculopathy"] == today - timedelta(days=200)
        assert dates["low_back_pain"] == today - timedelta(days=400)

    def test_latest_of_several_resources(self, model: Model, today: date, factory: Factory) -> None:
        older = low_back_pain(factory, onset_days_ago=700)
        newer = factory.condition(SNOMED, "279039007", "Low back pain", onset_days_ago=20)
        a = assess_resources(model, [*adult_with_knee_pain(factory), older, newer], today)
        c = by_key(a)["low_back_pain"]
        assert c.latest() == today - timedelta(days=20)
        assert c.references() == [f"Condition/{newer['id']}", f"Condition/{older['id']}"]
        assert c.weight == model.signals["low_back_pain"].weight  # counted once

    def test_all_missing_without_inputs(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(model, adult_with_knee_pain(factory), today)
        assert a.missing_inputs == tuple(e.label for e in model.expected_inputs)
        # absent back pain is no evidence against a spinal source: it is never an expected input
        assert {e.key for e in model.expected_inputs} == {"strength_exam", "root_exam"}

    @pytest.mark.parametrize(
        ("make", "gone"),
        [
            (lambda f: f.condition(ICD10, "M62.551", "Muscle wasting and atrophy, right thigh"), "strength_exam"),
            (lambda f: f.condition(SNOMED, "249939004", "Proximal muscle weakness", clinical="resolved"), "strength_exam"),
        ],
    )
    def test_missing_input_disappears(self, model: Model, today: date, factory: Factory, make: Any, gone: str) -> None:
        a = assess_resources(model, [*adult_with_knee_pain(factory), make(factory)], today)
        labels = {e.key: e.label for e in model.expected_inputs}
        assert labels[gone] not in a.missing_inputs
        assert set(a.missing_inputs) == set(labels.values()) - {labels[gone]}

    @pytest.mark.parametrize(("grade", "weak"), [(5, False), (4, True), (2, True)])
    def test_site_mapped_strength_exam(self, today: date, factory: Factory, grade: float, weak: bool) -> None:
        site_model = load_model(site={"codes": {"strength_exam": [{"system": SITE_SYSTEM, "code": "quad-strength"}]}})
        exam = factory.observation(SITE_SYSTEM, "quad-strength", "Quadriceps strength (MRC)", value=grade)
        a = assess_resources(site_model, [*adult_with_knee_pain(factory), exam], today)
        strength_label = next(e.label for e in site_model.expected_inputs if e.key == "strength_exam")
        assert strength_label not in a.missing_inputs
        fired = by_key(a)
        assert ("hip_quad_weakness" in fired) is weak
        if weak:
            assert fired["hip_quad_weakness"].references() == [f"Observation/{exam['id']}"]

    def test_site_codes_unknown_without_site(self, model: Model, today: date, factory: Factory) -> None:
        exam = factory.observation(SITE_SYSTEM, "quad-strength", "Quadriceps strength (MRC)", value=2)
        a = assess_resources(model, [*adult_with_knee_pain(factory), exam], today)
        assert "hip_quad_weakness" not in by_key(a)
        assert len(a.missing_inputs) == 2

    @pytest.mark.parametrize(("interpretation", "positive"), [("POS", True), ("A", True), ("N", False)])
    def test_site_mapped_femoral_stretch_exam(self, today: date, factory: Factory, interpretation: str, positive: bool) -> None:
        site_model = load_model(site={"codes": {"femoral_stretch_exam": [{"system": SITE_SYSTEM, "code": "femoral-stretch"}]}})
        exam = factory.observation(SITE_SYSTEM, "femoral-stretch", "Femoral nerve stretch test")
        exam["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": interpretation}]}]
        a = assess_resources(site_model, [*adult_with_knee_pain(factory), exam], today)
        label = next(e.label for e in site_model.expected_inputs if e.key == "root_exam")
        assert label not in a.missing_inputs
        assert ("root_exam" in by_key(a)) is positive

    @pytest.mark.parametrize(("interpretation", "reduced"), [("L", True), ("LL", True), ("A", False), ("H", False)])
    def test_site_mapped_patellar_reflex_counts_only_when_reduced(
        self, today: date, factory: Factory, interpretation: str, reduced: bool
    ) -> None:
        """An "abnormal" reflex may be brisk, which is no root sign: only a low (reduced) reflex counts."""
        site_model = load_model(site={"codes": {"patellar_reflex_exam": [{"system": SITE_SYSTEM, "code": "knee-jerk"}]}})
        exam = factory.observation(SITE_SYSTEM, "knee-jerk", "Patellar reflex")
        exam["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": interpretation}]}]
        a = assess_resources(site_model, [*adult_with_knee_pain(factory), exam], today)
        assert ("root_exam" in by_key(a)) is reduced


# -- suppression -----------------------------------------------------------------------------------


def spine_site_model() -> Model:
    return load_model(site={"referral": {"performer_type": SPINE_PERFORMER}})


class TestSuppression:
    def record(self, factory: Factory) -> list[Resource]:
        return [
            *adult_with_knee_pain(factory),
            radiculopathy(factory),
            low_back_pain(factory, onset_days_ago=300),
            thigh_pain(factory),
        ]

    def referral(self, factory: Factory, code: str = "308481009", status: str = "active", **extra: Any) -> Resource:
        return factory.service_request(SNOMED, code, "Referral", status=status) | extra

    def test_unsuppressed_baseline(self, model: Model, today: date, factory: Factory) -> None:
        a = assess_resources(model, self.record(factory), today)
        assert a.band == "likely"
        assert not a.suppressed
        assert a.actionable

    @pytest.mark.parametrize("status", ["active", "on-hold"])
    def test_spine_referral_suppresses(self, model: Model, today: date, factory: Factory, status: str) -> None:
        referral = self.referral(factory, "308482002", status=status)
        a = assess_resources(model, [*self.record(factory), referral], today)
        assert a.suppressed
        assert not a.actionable
        assert [s.reference for s in a.suppressions] == [f"ServiceRequest/{referral['id']}"]
        assert a.band == "likely"  # the band is still computed; only the card is silenced

    @pytest.mark.parametrize("status", ["revoked", "entered-in-error", "draft"])
    def test_inactive_spine_referral_does_not_suppress(self, model: Model, today: date, factory: Factory, status: str) -> None:
        a = assess_resources(model, [*self.record(factory), self.referral(factory, "308482002", status=status)], today)
        assert not a.suppressed

    def test_generic_referral_does_not_suppress(self, today: date, factory: Factory) -> None:
        a = assess_resources(spine_site_model(), [*self.record(factory), self.referral(factory)], today)
        assert not a.suppressed

    def test_generic_referral_to_spine_performer_suppresses(self, today: date, factory: Factory) -> None:
        referral = self.referral(factory, performerType={"coding": [SPINE_PERFORMER]})
        assert assess_resources(spine_site_model(), [*self.record(factory), referral], today).suppressed

    def test_performer_type_matches_site_system_family(self, today: date, factory: Factory) -> None:
        coding = {"system": "urn:oid:2.16.840.1.113883.6.96", "code": SPINE_PERFORMER["code"]}
        referral = self.referral(factory, performerType={"coding": [coding]})
        assert assess_resources(spine_site_model(), [*self.record(factory), referral], today).suppressed

    def test_generic_referral_other_performer_does_not_suppress(self, today: date, factory: Factory) -> None:
        other = {"system": SNOMED, "code": "394801008", "display": "Trauma and orthopaedics"}
        referral = self.referral(factory, performerType={"coding": [other]})
        assert not assess_resources(spine_site_model(), [*self.record(factory), referral], today).suppressed

    def test_performer_without_site_configuration_does_not_suppress(self, model: Model, today: date, factory: Factory) -> None:
        referral = self.referral(factory, performerType={"coding": [SPINE_PERFORMER]})
        assert not assess_resources(model, [*self.record(factory), referral], today).suppressed

    def test_generic_referral_with_spinal_reason_code_suppresses(self, model: Model, today: date, factory: Factory) -> None:
        reason = {"coding": [{"system": ICD10, "code": "M48.062", "display": "Lumbar stenosis"}]}
        referral = self.referral(factory, reasonCode=[reason])
        assert assess_resources(model, [*self.record(factory), referral], today).suppressed

    def test_generic_referral_with_knee_reason_code_does_not_suppress(self, model: Model, today: date, factory: Factory) -> None:
        reason = {"coding": [{"system": ICD10, "code": "M17.11", "display": "Knee OA"}]}
        referral = self.referral(factory, reasonCode=[reason])
        assert not assess_resources(model, [*self.record(factory), referral], today).suppressed

    def test_generic_referral_with_spinal_reason_reference_suppresses(self, model: Model, today: date, factory: Factory) -> None:
        record = self.record(factory)
        spinal = record[2]
        referral = self.referral(factory, reasonReference=[{"reference": f"Condition/{spinal['id']}"}])
        assert assess_resources(model, [*record, referral], today).suppressed

    def test_generic_referral_with_knee_reason_reference_does_not_suppress(
        self, model: Model, today: date, factory: Factory
    ) -> None:
        record = self.record(factory)
        knee = record[1]
        referral = self.referral(factory, reasonReference=[{"reference": f"Condition/{knee['id']}"}])
        assert not assess_resources(model, [*record, referral], today).suppressed

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(
                lambda f, d: f.service_request(LOINC, "24968-0", "MR Lumbar spine", status="completed", days_ago=d), id="sr-loinc"
            ),
            pytest.param(
                lambda f, d: f.service_request(CPT, "72148", "MRI lumbar spine", status="completed", days_ago=d), id="sr-cpt"
            ),
            pytest.param(lambda f, d: f.procedure(LOINC, "24968-0", "MR Lumbar spine", days_ago=d), id="proc-loinc"),
            pytest.param(lambda f, d: f.procedure(CPT, "72148", "MRI lumbar spine", days_ago=d), id="proc-cpt"),
        ],
    )
    @pytest.mark.parametrize(("days_ago", "suppressed"), [(179, True), (180, True), (181, False)])
    def test_completed_lumbar_mri_window(
        self, model: Model, today: date, factory: Factory, make: Any, days_ago: int, suppressed: bool
    ) -> None:
        assert model.suppression["completed_within_days"] == 180
        mri = make(factory, days_ago)
        a = assess_resources(model, [*self.record(factory), mri], today)
        assert a.suppressed is suppressed
        if suppressed:
            assert a.suppressions[0].reference == f"{mri['resourceType']}/{mri['id']}"
            assert "MRI" in a.suppressions[0].reason

    def test_active_lumbar_mri_order_suppresses_whatever_its_date(self, model: Model, today: date, factory: Factory) -> None:
        mri = factory.service_request(LOINC, "24968-0", "MR Lumbar spine", status="active", days_ago=900)
        assert assess_resources(model, [*self.record(factory), mri], today).suppressed

    def test_completed_spine_referral_window(self, model: Model, today: date, factory: Factory) -> None:
        recent = factory.service_request(SNOMED, "308482002", "Referral to neurosurgeon", status="completed", days_ago=100)
        old = factory.service_request(SNOMED, "308482002", "Referral to neurosurgeon", status="completed", days_ago=400)
        assert assess_resources(model, [*self.record(factory), recent], today).suppressed
        assert not assess_resources(model, [*self.record(factory), old], today).suppressed

    @pytest.mark.parametrize(("window", "days_ago", "suppressed"), [(30, 29, True), (30, 31, False), (400, 390, True)])
    def test_window_configurable_by_site(
        self, today: date, factory: Factory, window: int, days_ago: int, suppressed: bool
    ) -> None:
        site_model = load_model(site={"suppression_days": window})
        mri = factory.procedure(LOINC, "24968-0", "MR Lumbar spine", days_ago=days_ago)
        assert assess_resources(site_model, [*self.record(factory), mri], today).suppressed is suppressed

    def test_other_patients_referral_ignored(self, model: Model, today: date, factory: Factory) -> None:
        other = Factory(seed=8, today=today)
        referral = other.service_request(SNOMED, "308482002", "Referral to neurosurgeon")
        a = assess(model, read_record(model, [*self.record(factory), referral], patient_id=factory.patient_id), today)
        assert not a.suppressed


# -- determinism and privacy -----------------------------------------------------------------------


class TestDeterminism:
    @pytest.mark.parametrize("profile", ["radiculopathy-knee-pain", "elderly-stenosis", "already-referred", "child"])
    def test_same_record_same_output(self, model: Model, today: date, profile: str) -> None:
        first = assess_resources(model, generate(profile, seed=3, today=today), today).to_dict()
        second = assess_resources(model, generate(profile, seed=3, today=today), today).to_dict()
        assert first == second
        assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)

    def test_resource_order_does_not_matter(self, model: Model, today: date) -> None:
        resources = generate("noisy-record", today=today)
        forward = assess_resources(model, resources, today).to_dict()
        backward = assess_resources(model, list(reversed(resources)), today).to_dict()
        assert forward == backward

    def test_to_dict_names_model(self, model: Model, today: date) -> None:
        out = assess_resources(model, generate("radiculopathy-knee-pain", today=today), today).to_dict()
        assert out["model"] == {"id": model.id, "version": model.version, "hash": model.hash}
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", out["model"]["hash"])
        assert out["as_of"] == today.isoformat()
        assert out["band"] == "likely"

    def test_site_configuration_changes_hash(self, model: Model, today: date) -> None:
        site_model = load_model(site={"suppression_days": 90})
        resources = generate("radiculopathy-knee-pain", today=today)
        assert assess_resources(site_model, resources, today).to_dict()["model"]["hash"] != model.hash

    @pytest.mark.parametrize("profile", ["radiculopathy-knee-pain", "elderly-stenosis", "already-referred", "child"])
    def test_to_dict_has_no_patient_id_or_name(self, model: Model, today: date, profile: str) -> None:
        resources = generate(profile, seed=5, today=today)
        resources[0]["name"] = [{"family": "Zylberstein", "given": ["Philippa"]}]
        a = assess_resources(model, resources, today)
        text = json.dumps(a.to_dict())
        assert resources[0]["id"] not in text
        assert "Patient/" not in text
        assert "Zylberstein" not in text and "Philippa" not in text
        assert "patient" not in {k.lower() for k in a.to_dict()}

    def test_to_dict_shows_points_and_what_counted_with_what(self, model: Model, today: date) -> None:
        a = assess_resources(model, generate("radiculopathy-knee-pain", today=today), today)
        findings = {f["signal"]: f for f in a.to_dict()["findings"]}
        assert findings["low_back_pain"]["points"] == 0
        assert findings["low_back_pain"]["counted_with"] == "lumbar_radiculopathy"
        assert findings["lumbar_radiculopathy"]["points"] == model.signals["lumbar_radiculopathy"].weight


# -- deceased patients ------------------------------------------------------------------------------


@pytest.mark.parametrize("deceased", [{"deceasedBoolean": True}, {"deceasedDateTime": "2026-11-20T08:30:00Z"}])
def test_a_deceased_patient_is_not_assessed_and_gets_no_card(
    model: Model, today: date, factory: Factory, deceased: dict[str, Any]
) -> None:
    """Patient.deceased[x], either form: no card, and (being ineligible) no worklist row."""
    resources = generate("radiculopathy-knee-pain", today=today)
    resources[0].update(deceased)
    assessment = assess_resources(model, resources, today)
    assert (assessment.eligible, assessment.ineligible_reason) == (False, "the patient is deceased")
    assert build_cards(model, assessment, CardOptions("https://cds.example.org/model"), hook="patient-view") == []


def test_deceased_false_is_assessed_as_usual(model: Model, today: date) -> None:
    resources = generate("radiculopathy-knee-pain", today=today)
    resources[0]["deceasedBoolean"] = False
    assert assess_resources(model, resources, today).band == "likely"
