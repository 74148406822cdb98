"""Model 2.0's rules: gates, one count per episode, sides, differentials, knee-only injuries, spine care.

Each rule is checked in ICD-10-CM and SNOMED CT form where the model codes both.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from hooks.fhir import SUGGESTION_IDENTIFIER_SYSTEM
from hooks.model import Model
from hooks.synthetic import CPT, ICD10, SNOMED, Factory, Resource, radiculopathy_knee_pain
from tests.hooks.conftest import adult_with_knee_pain, assess_resources


def points(assessment: Any) -> dict[str, float]:
    return {c.signal.key: c.points for c in assessment.contributions}


def right_knee(factory: Factory, age: int = 60) -> list[Resource]:
    return [factory.patient(age), factory.condition(ICD10, "M25.561", "Pain in right knee")]


# -- gates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "band"),
    [
        pytest.param([(ICD10, "M54.50")], "unlikely", id="back-pain-alone-icd"),
        pytest.param([(SNOMED, "279039007")], "unlikely", id="back-pain-alone-snomed"),
        pytest.param([(ICD10, "M54.50"), (ICD10, "M20.11"), (ICD10, "M21.41"), (ICD10, "M62.551")], "unlikely", id="seeds-icd"),
        pytest.param(
            [(SNOMED, "279039007"), (SNOMED, "122480009"), (SNOMED, "53226007"), (SNOMED, "249939004")],
            "unlikely",
            id="seeds-snomed",
        ),
        pytest.param([(ICD10, "M54.16")], "possible", id="radiculopathy-icd"),
        pytest.param([(SNOMED, "128196005")], "possible", id="radiculopathy-snomed"),
        pytest.param([(ICD10, "M48.062")], "possible", id="stenosis-icd"),
        pytest.param([(SNOMED, "18347007")], "possible", id="stenosis-snomed"),
        pytest.param([(ICD10, "M54.50"), (ICD10, "M79.651")], "possible", id="thigh-with-back-icd"),
        pytest.param([(SNOMED, "279039007"), (SNOMED, "78514002")], "possible", id="thigh-with-back-snomed"),
        pytest.param([(ICD10, "M79.651")], "unlikely", id="thigh-alone"),
        pytest.param([(ICD10, "M54.16"), (ICD10, "M48.062")], "possible", id="two-spinal-findings-no-mid-lumbar"),
        pytest.param([(ICD10, "M54.16"), (ICD10, "M79.651")], "likely", id="l3-l4-icd"),
        pytest.param([(SNOMED, "202735001"), (SNOMED, "78514002")], "likely", id="l3-l4-snomed"),
        pytest.param([(ICD10, "M51.26"), (ICD10, "M79.651")], "likely", id="disc-displacement-thigh-icd"),
        pytest.param([(SNOMED, "202708005"), (SNOMED, "309537005")], "likely", id="disc-displacement-numbness-snomed"),
        pytest.param(
            [(ICD10, "M54.31"), (ICD10, "M54.50"), (ICD10, "M79.651"), (ICD10, "M20.11")], "possible", id="sciatica-caps"
        ),
    ],
)
def test_bands_need_spinal_then_mid_lumbar_evidence(
    model: Model, today: date, factory: Factory, codes: list[tuple[str, str]], band: str
) -> None:
    resources = [*right_knee(factory), *(factory.condition(system, code, code) for system, code in codes)]
    a = assess_resources(model, resources, today)
    assert a.band == band, a.summary()


def test_a_held_band_says_why(model: Model, today: date, factory: Factory) -> None:
    resources = [*adult_with_knee_pain(factory)]
    resources += [factory.condition(ICD10, c, c) for c in ("M54.50", "M20.11", "M21.41", "M62.551")]
    held = assess_resources(model, resources, today)
    assert (held.score, held.band, held.held_by) == (1.0, "unlikely", "no spinal finding")
    radiculopathy_and_stenosis = [
        *adult_with_knee_pain(factory),
        *(factory.condition(ICD10, c, c) for c in ("M54.16", "M48.062")),
    ]
    capped = assess_resources(model, radiculopathy_and_stenosis, today)
    assert (capped.score, capped.band, capped.held_by) == (3.0, "possible", "no mid-lumbar evidence")


def test_sciatica_weighs_less_than_a_lumbar_radiculopathy(model: Model) -> None:
    assert model.signals["sciatica"].weight < model.signals["lumbar_radiculopathy"].weight
    assert not model.signals["sciatica"].mid_lumbar


# -- one count per episode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("back", "sciatica"),
    [((ICD10, "M54.50"), (ICD10, "M54.41")), ((SNOMED, "279039007"), (SNOMED, "23056005"))],
    ids=["icd", "snomed"],
)
def test_back_pain_and_lumbago_with_sciatica_count_once(
    model: Model, today: date, factory: Factory, back: tuple[str, str], sciatica: tuple[str, str]
) -> None:
    resources = [*right_knee(factory), factory.condition(*back, "back"), factory.condition(*sciatica, "sciatica")]
    a = assess_resources(model, resources, today)
    assert points(a) == {"sciatica": 1.0, "low_back_pain": 0.0}
    (back_pain,) = [c for c in a.findings if c.signal.key == "low_back_pain"]
    assert back_pain.counted_with == "sciatica"


def test_two_codes_for_one_root_count_once(model: Model, today: date, factory: Factory) -> None:
    resources = [*right_knee(factory), factory.condition(ICD10, "M54.16", "r"), factory.condition(ICD10, "M51.16", "d")]
    a = assess_resources(model, resources, today)
    assert a.score == model.signals["lumbar_radiculopathy"].weight
    resources.append(factory.condition(ICD10, "M51.26", "displacement"))
    assert assess_resources(model, resources, today).score == model.signals["lumbar_radiculopathy"].weight


def test_thigh_pain_counts_once(model: Model, today: date, factory: Factory) -> None:
    codes = ("M54.16", "M54.50", "M79.651")
    a = assess_resources(model, [*right_knee(factory), *(factory.condition(ICD10, c, c) for c in codes)], today)
    assert points(a) == {"lumbar_radiculopathy": 1.5, "l3_l4_picture": 1.5, "thigh_with_back_problem": 0.0, "low_back_pain": 0.0}


def test_seed_signs_are_capped_together(model: Model, today: date, factory: Factory) -> None:
    codes = ("M54.16", "M20.11", "M21.41", "M62.551")
    a = assess_resources(model, [*right_knee(factory), *(factory.condition(ICD10, c, c) for c in codes)], today)
    seeds = [c for c in a.findings if c.signal.group == "seed_signs"]
    assert len(seeds) == 4
    assert sum(c.points for c in seeds) == model.groups["seed_signs"].cap == 0.5
    assert all(c.signal.ratio is None and c.signal.evidence == "hypothesis" for c in seeds)


def test_generalised_weakness_is_not_quadriceps_weakness(model: Model, today: date, factory: Factory) -> None:
    a = assess_resources(model, [*right_knee(factory), factory.condition(ICD10, "M62.81", "Muscle weakness")], today)
    assert a.contributions == ()
    for code in ("26544005", "713514005", "88092000"):
        a = assess_resources(model, [*right_knee(factory), factory.condition(SNOMED, code, "weakness")], today)
        assert a.contributions == ()


# -- sides and differentials -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "counted"), [("M54.42", False), ("M54.41", True), ("M54.40", True)], ids=["opposite", "same", "unsided"]
)
def test_a_finding_on_the_other_side_is_shown_not_counted(
    model: Model, today: date, factory: Factory, code: str, counted: bool
) -> None:
    a = assess_resources(model, [*right_knee(factory), factory.condition(ICD10, code, code)], today)
    assert ("sciatica" in points(a)) is counted
    assert [n.reason for n in a.not_counted] == ([] if counted else ["other side"])


@pytest.mark.parametrize(
    ("code", "counted"),
    [("M17.12", False), ("M17.32", False), ("M17.11", True), ("M17.0", True), ("M17.9", True)],
    ids=["primary-opposite", "post-traumatic-opposite", "same", "both", "unsided"],
)
def test_knee_osteoarthritis_of_the_other_knee_does_not_count_against(
    model: Model, today: date, factory: Factory, code: str, counted: bool
) -> None:
    a = assess_resources(model, [*right_knee(factory), factory.condition(ICD10, code, code)], today)
    assert ("knee_oa" in {c.signal.key for c in a.alternatives}) is counted
    assert [n.reason for n in a.not_counted] == ([] if counted else ["other side"])


def test_knee_osteoarthritis_as_the_complaint_gives_the_knee_side(model: Model, today: date, factory: Factory) -> None:
    pain = factory.observation("http://loinc.org", "72514-3", "Pain severity", value=6, days_ago=10)
    oa = factory.condition(ICD10, "M17.12", "Unilateral primary osteoarthritis, left knee")
    a = assess_resources(model, [factory.patient(60), oa, pain], today)
    assert a.eligible and a.knee_laterality == "left"


def test_side_from_body_site_in_snomed_form(model: Model, today: date, factory: Factory) -> None:
    resources = [
        factory.patient(60),
        factory.condition(SNOMED, "30989003", "Knee pain", body_site="left knee"),
        factory.condition(SNOMED, "23056005", "Sciatica", body_site="right leg"),
    ]
    a = assess_resources(model, resources, today)
    assert a.knee_laterality == "left" and a.contributions == ()
    assert [n.reason for n in a.not_counted] == ["other side"]


def test_both_knees_take_either_side(model: Model, today: date, factory: Factory) -> None:
    resources = [
        factory.patient(60),
        factory.condition(ICD10, "M25.561", "Pain in right knee"),
        factory.condition(ICD10, "M25.562", "Pain in left knee"),
        factory.condition(ICD10, "M54.42", "Lumbago with sciatica, left side"),
    ]
    a = assess_resources(model, resources, today)
    assert a.knee_laterality == "bilateral" and "sciatica" in points(a)


@pytest.mark.parametrize(("system", "code"), [(ICD10, "M54.16"), (SNOMED, "128196005")])
@pytest.mark.parametrize(("verification", "counted"), [("differential", False), ("provisional", True), ("confirmed", True)])
def test_a_differential_is_not_counted_as_fact(
    model: Model, today: date, factory: Factory, system: str, code: str, verification: str, counted: bool
) -> None:
    condition = factory.condition(system, code, "radiculopathy", verification=verification)
    a = assess_resources(model, [*right_knee(factory), condition], today)
    assert ("lumbar_radiculopathy" in points(a)) is counted
    assert [n.reason for n in a.not_counted] == ([] if counted else ["differential"])


# -- what is not spinal evidence -------------------------------------------------------------------


@pytest.mark.parametrize(("system", "code"), [(ICD10, "G57.21"), (ICD10, "G57.20")])
def test_a_femoral_nerve_lesion_is_an_alternative(model: Model, today: date, factory: Factory, system: str, code: str) -> None:
    a = assess_resources(model, [*right_knee(factory), factory.condition(system, code, "Lesion of femoral nerve")], today)
    assert points(a) == {"peripheral_nerve_lesion": -1.0}


def test_an_abnormal_reflex_code_is_no_root_sign(model: Model, today: date, factory: Factory) -> None:
    a = assess_resources(model, [*right_knee(factory), factory.condition(ICD10, "R29.2", "Abnormal reflex")], today)
    assert a.contributions == ()


@pytest.mark.parametrize(
    ("code", "knee"),
    [
        ("S83.511A", True),  # cruciate sprain
        ("S83.241D", True),  # meniscus tear
        ("S82.001A", True),  # patella fracture
        ("S80.01XA", True),  # contusion of knee
        ("S82.51XD", False),  # medial malleolus: the ankle
        ("S82.61XA", False),  # lateral malleolus
        ("S86.011A", False),  # Achilles tendon
        ("S80.11XA", False),  # contusion of the lower leg
    ],
)
def test_knee_injuries_are_knee_codes_only(model: Model, today: date, factory: Factory, code: str, knee: bool) -> None:
    injury = factory.condition(ICD10, code, code, onset_days_ago=40)
    a = assess_resources(model, [*right_knee(factory), injury], today)
    assert ("recent_knee_injury" in points(a)) is knee


# -- spine care ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda f, d: f.procedure(CPT, "63047", "Laminectomy, lumbar", days_ago=d), id="cpt-laminectomy"),
        pytest.param(lambda f, d: f.procedure(CPT, "22612", "Arthrodesis, lumbar", days_ago=d), id="cpt-fusion"),
        pytest.param(lambda f, d: f.procedure(SNOMED, "427752004", "Lumbar laminectomy", days_ago=d), id="snomed-laminectomy"),
        pytest.param(lambda f, d: f.procedure(SNOMED, "50172003", "Lumbar spinal fusion", days_ago=d), id="snomed-fusion"),
    ],
)
@pytest.mark.parametrize(("days_ago", "suppressed"), [(90, True), (730, True), (731, False)])
def test_spine_surgery_suppresses_for_two_years(
    model: Model, today: date, factory: Factory, make: Any, days_ago: int, suppressed: bool
) -> None:
    assert model.suppression["spine_surgery_within_days"] == 730
    a = assess_resources(model, [*radiculopathy_knee_pain(factory), make(factory, days_ago)], today)
    assert a.suppressed is suppressed
    if suppressed:
        assert a.suppressions[0].reason.startswith("spine surgery on ")


@pytest.mark.parametrize(("system", "code"), [(ICD10, "M96.1"), (SNOMED, "202725007")])
def test_an_active_post_surgical_condition_suppresses(
    model: Model, today: date, factory: Factory, system: str, code: str
) -> None:
    condition = factory.condition(system, code, "Postlaminectomy syndrome", onset_days_ago=3000)
    assert assess_resources(model, [*radiculopathy_knee_pain(factory), condition], today).suppressed
    resolved = factory.condition(system, code, "Postlaminectomy syndrome", clinical="resolved", onset_days_ago=3000)
    assert not assess_resources(model, [*radiculopathy_knee_pain(factory), resolved], today).suppressed


def test_arthrodesis_status_is_not_spine_surgery(model: Model, today: date, factory: Factory) -> None:
    """Z98.1 may be an ankle fusion: it is not in the spine surgery value set."""
    status = factory.condition(ICD10, "Z98.1", "Arthrodesis status")
    assert not assess_resources(model, [*radiculopathy_knee_pain(factory), status], today).suppressed


@pytest.mark.parametrize(
    ("reason", "suppressed"),
    [
        ("Lumbar radiculopathy", True),
        ("L4 radicular pain, please assess", True),
        ("low BACK PAIN with knee pain", True),
        ("Sciatica", True),
        ("Knee osteoarthritis", False),
        ("Discoid meniscus", False),  # "disc" as a word only
    ],
)
def test_a_referral_with_a_spinal_reason_in_text_suppresses(
    model: Model, today: date, factory: Factory, reason: str, suppressed: bool
) -> None:
    referral = factory.service_request(SNOMED, "308481009", "Referral to orthopedic surgeon", reason_text=reason)
    assert assess_resources(model, [*radiculopathy_knee_pain(factory), referral], today).suppressed is suppressed


def test_a_referral_naming_any_finding_suppresses(model: Model, today: date, factory: Factory) -> None:
    resources = [*radiculopathy_knee_pain(factory), factory.condition(ICD10, "M20.11", "Hallux valgus")]
    bunion = resources[-1]
    referral = factory.service_request(SNOMED, "308481009", "Referral") | {
        "reasonReference": [{"reference": f"Condition/{bunion['id']}"}]
    }
    assert assess_resources(model, [*resources, referral], today).suppressed


def test_a_referral_whose_reference_display_is_spinal_suppresses(model: Model, today: date, factory: Factory) -> None:
    referral = factory.service_request(SNOMED, "308481009", "Referral") | {
        "reasonReference": [{"reference": "Condition/elsewhere", "display": "Lumbar spinal stenosis"}]
    }
    assert assess_resources(model, [*radiculopathy_knee_pain(factory), referral], today).suppressed


@pytest.mark.parametrize("status", ["active", "completed"])
def test_the_cards_own_referral_suppresses_whatever_its_code_or_reasons(
    model: Model, today: date, factory: Factory, status: str
) -> None:
    own = factory.service_request(
        SNOMED, "308481009", "Referral", status=status, days_ago=20, identifier=(SUGGESTION_IDENTIFIER_SYSTEM, "card-1")
    )
    a = assess_resources(model, [*radiculopathy_knee_pain(factory), own], today)
    assert a.suppressed and a.suppressions[0].reference == f"ServiceRequest/{own['id']}"
    plain = factory.service_request(SNOMED, "308481009", "Referral", status=status, days_ago=20)
    assert not assess_resources(model, [*radiculopathy_knee_pain(factory), plain], today).suppressed
