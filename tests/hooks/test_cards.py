"""CDS Hooks 2.0 card rules (requirement IDs from cds-hooks-2.0-requirements.csv) and the card's content."""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from hooks.assessment import Assessment
from hooks.cards import (
    NON_ADHERENCE_CATEGORIES,
    NON_ADHERENCE_CATEGORY,
    OVERRIDE_REASONS,
    RED_FLAG_TOPIC,
    TOPIC,
    CardOptions,
    build_cards,
    plain_text,
    prune,
)
from hooks.model import Model, load_model
from hooks.services import SERVICES_BY_ID, evaluate
from hooks.synthetic import ICD10, PROFILES, SNOMED, Factory
from tests.hooks.conftest import (
    DOCS_URL,
    HookCall,
    adult_with_knee_pain,
    assess_resources,
    low_back_pain,
    radiculopathy,
    thigh_pain,
)

PatientView = Callable[..., HookCall]
SPINE_PERFORMER = {"system": SNOMED, "code": "722172003", "display": "Spine surgery service"}
SITE_REFERRAL = {"system": "http://example.org/orders", "code": "REF-SPINE", "display": "Spine clinic referral"}
LIKELY_PROFILES = ["radiculopathy-knee-pain", "disc-displacement-thigh", "l3-l4-knee-oa"]
POSSIBLE_PROFILES = ["elderly-stenosis", "double-coded-episode", "sciatica-seed-signs"]
CARD_PROFILES = [*LIKELY_PROFILES, *POSSIBLE_PROFILES]
SITE = "http://example.org/site"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def one_card(model: Model, today: date, call: HookCall, instance: str | None = "hook-instance-1") -> dict[str, Any]:
    cards = call.run(model, today, instance).cards
    assert len(cards) == 1
    return cards[0]


def is_absolute_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def walk(value: Any, path: str = "card") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")


@pytest.fixture(params=CARD_PROFILES)
def card(request: pytest.FixtureRequest, model: Model, today: date, patient_view_request: PatientView) -> dict[str, Any]:
    """A patient-view card for each profile that gives one."""
    return one_card(model, today, patient_view_request(request.param))


@pytest.fixture(params=LIKELY_PROFILES)
def referral_card(request: pytest.FixtureRequest, model: Model, today: date, patient_view_request: PatientView) -> dict[str, Any]:
    """A `likely` card, the only kind that offers the referral."""
    return one_card(model, today, patient_view_request(request.param))


@pytest.fixture
def likely_card(model: Model, today: date, patient_view_request: PatientView) -> dict[str, Any]:
    return one_card(model, today, patient_view_request())


# -- which card, which indicator -------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_indicator_follows_band_reqs_87_88(model: Model, today: date, patient_view_request: PatientView, profile: Any) -> None:
    """req 87, 88, 89: indicator is a string among info/warning/critical; possible->info, likely->warning, a red
    flag->warning (its own card), else no card."""
    evaluation = patient_view_request(profile.name).run(model, today)
    expected = {"possible": ["info"], "likely": ["warning"], "red-flag": ["warning"]}.get(profile.expected, [])
    assert [c["indicator"] for c in evaluation.cards] == expected


@pytest.mark.parametrize("hook_call", ["patient_view_request", "order_sign_request", "order_select_request"])
@pytest.mark.parametrize("profile", [p.name for p in PROFILES])
def test_never_critical_req_88(model: Model, today: date, request: pytest.FixtureRequest, hook_call: str, profile: str) -> None:
    """req 88: indicator values are info, warning, critical; this service never uses critical."""
    for card in request.getfixturevalue(hook_call)(profile).run(model, today).cards:
        assert card["indicator"] in ("info", "warning")


def test_unactionable_assessment_gives_no_card(model: Model, today: date, factory: Factory) -> None:
    a = assess_resources(model, adult_with_knee_pain(factory), today)
    assert a.band == "unlikely"
    assert build_cards(model, a, CardOptions(DOCS_URL), hook="patient-view") == []


# -- summary and detail ----------------------------------------------------------------------------


def test_summary_req_83(card: dict[str, Any]) -> None:
    """req 83: summary is a string of under 140 characters; wording says "consider"."""
    assert isinstance(card["summary"], str)
    assert 0 < len(card["summary"]) < 140
    assert "consider" in card["summary"].lower()
    assert "%" not in card["summary"]


def test_detail_is_markdown_req_84_85(card: dict[str, Any]) -> None:
    """req 84, 85: detail, when present, is GitHub Flavored Markdown: bold labels, one list item per entry."""
    detail = card["detail"]
    assert isinstance(detail, str)
    assert "**Knee complaint:**" in detail
    assert re.search(r"^\*\*(Likely|Possible)\*\*: ", detail, re.MULTILINE)
    items = [line for line in detail.splitlines() if line.startswith("- ")]
    assert items
    assert not any("|" in line.replace("\\|", "") for line in detail.splitlines())


@pytest.mark.parametrize("profile", CARD_PROFILES)
def test_detail_is_short_and_patient_specific(model: Model, today: date, patient_view_request: PatientView, profile: str) -> None:
    """At most about 120 words; the summary names the side and the record's own main finding."""
    evaluation = patient_view_request(profile).run(model, today)
    (card,) = evaluation.cards
    a = evaluation.assessment
    assert len(card["detail"].split()) <= 120
    assert a.main_finding is not None
    assert a.main_finding.evidence[0].name.lower() in card["summary"].lower()
    if a.knee_laterality == "right":
        assert card["summary"].startswith("Right knee pain")


@pytest.mark.parametrize("profile", CARD_PROFILES)
def test_detail_lists_each_counted_entry_as_the_record_has_it(
    model: Model, today: date, patient_view_request: PatientView, profile: str
) -> None:
    """One line per finding: the record's display and code, clinical and verification status, side, age; the knee
    complaint that made the patient eligible; points or what it was counted with. The reasons live on /model."""
    evaluation = patient_view_request(profile).run(model, today)
    a, detail = evaluation.assessment, evaluation.cards[0]["detail"]
    complaint = a.knee_complaint[0]
    assert f"**Knee complaint:** {complaint.name} (" in detail
    lines = detail.splitlines()
    for c in a.findings:
        if (c.signal.requires_all and not c.points) or model.groups[c.signal.group].caption:
            continue
        entry = c.evidence[0] if not c.signal.requires_all else c.evidence[-1]
        (line,) = [line for line in lines if line.startswith(f"- {entry.name} (")][:1]
        assert f"{entry.coding.code})" in line
        assert f"{entry.status}/{entry.verification}" in line
        assert " ago" in line
    for c in a.findings:
        assert c.signal.why not in detail  # the why paragraphs are on the model page
    assert DOCS_URL in detail


def test_detail_flags_old_entries_and_the_side(model: Model, today: date, factory: Factory) -> None:
    resources = [
        factory.patient(60),
        factory.condition(ICD10, "M25.561", "Pain in right knee"),
        factory.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", onset_days_ago=1200),
        factory.condition(ICD10, "M79.651", "Pain in right thigh"),
        factory.condition(ICD10, "M79.652", "Pain in left thigh"),
    ]
    a = assess_resources(model, resources, today)
    (card,) = build_cards(model, a, CardOptions(DOCS_URL), hook="patient-view", patient_id=factory.patient_id)
    detail = card["detail"]
    assert "Radiculopathy, lumbar region (ICD-10-CM M54.16), active/confirmed, side not stated, 3 y ago (old)" in detail
    assert "Pain in right thigh (ICD-10-CM M79.651), active/confirmed, right (same as knee)" in detail
    assert "**Not counted:** Pain in left thigh (other side)." in detail


def test_seed_signs_are_labelled_as_hypothesis_without_a_ratio(
    model: Model, today: date, patient_view_request: PatientView
) -> None:
    (card,) = patient_view_request("sciatica-seed-signs").run(model, today).cards
    caption = model.groups["seed_signs"].caption
    assert caption == "hypothesis from a spine practice's patient article; no supporting study"
    (seed_line,) = [line for line in card["detail"].splitlines() if caption in line]
    for name in ("Hallux valgus (acquired), right foot", "Flat foot [pes planus] (acquired), right foot"):
        assert name in seed_line
    assert f"[+{model.groups['seed_signs'].cap:.2f} together: {caption}]" in seed_line
    assert not re.search(r"\b(OR|RR|aHR|LR\+?) \d", seed_line)


def test_detail_lists_missing_inputs(model: Model, today: date, patient_view_request: PatientView) -> None:
    evaluation = patient_view_request("elderly-stenosis").run(model, today)
    detail = evaluation.cards[0]["detail"]
    assert evaluation.assessment.missing_inputs
    assert f"**Not in the record:** {'; '.join(evaluation.assessment.missing_inputs)}." in detail


def test_detail_names_model(likely_card: dict[str, Any], model: Model) -> None:
    assert f"model {model.version}." in likely_card["detail"]
    assert "does not screen for red flags" in likely_card["detail"]


def test_detail_no_bare_probability(card: dict[str, Any]) -> None:
    """The band is never shown as a probability: no percentage anywhere."""
    assert "%" not in card["detail"]
    assert not re.search(r"(possible|likely|unlikely)\**\s*\(?\s*\d+(\.\d+)?\s*%", card["detail"], re.IGNORECASE)


@pytest.mark.parametrize("profile", POSSIBLE_PROFILES)
def test_a_possible_card_advises_examination_first_and_offers_no_referral(
    model: Model, today: date, patient_view_request: PatientView, profile: str
) -> None:
    (card,) = patient_view_request(profile).run(model, today).cards
    assert card["indicator"] == "info"
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert str(model.detail["examine_first"]).strip() in card["detail"]
    assert "femoral nerve stretch" in card["detail"] and "hip rotation" in card["detail"]
    assert "examining" in card["summary"]


def test_detail_escapes_table_breaking_text(model: Model, today: date, order_sign_request: Callable[..., HookCall]) -> None:
    def piped_order(f: Factory) -> dict[str, Any]:
        return f.service_request(SNOMED, "241641004", "MRI | knee\nleft", status="draft", days_ago=0)

    card = one_card(model, today, order_sign_request(orders=(piped_order,)))
    assert "MRI \\| knee left" in card["detail"]


# -- uuid ------------------------------------------------------------------------------------------


def uuids(card: dict[str, Any]) -> list[str]:
    return [card["uuid"], *(s["uuid"] for s in card.get("suggestions", []))]


def test_uuids_req_80_119(card: dict[str, Any]) -> None:
    """req 80, 81, 118, 119: the optional uuids are sent, as strings identifying card and suggestion uniquely."""
    ids = uuids(card)
    assert len(ids) == 1 + len(card.get("suggestions", []))
    assert all(isinstance(u, str) and str(uuid.UUID(u)) == u for u in ids)
    assert len(set(ids)) == len(ids)


def test_uuids_stable_per_hook_instance_req_80(model: Model, today: date, patient_view_request: PatientView) -> None:
    """req 80, 82: a retried hook call gives the same uuids (audit, feedback); another call gives new ones."""
    call = patient_view_request()
    first = uuids(one_card(model, today, call, "instance-a"))
    again = uuids(one_card(model, today, call, "instance-a"))
    other = uuids(one_card(model, today, call, "instance-b"))
    assert first == again
    assert not set(first) & set(other)


def test_uuids_differ_between_hooks_in_one_instance(
    model: Model, today: date, patient_view_request: PatientView, order_sign_request: Callable[..., HookCall]
) -> None:
    patient = uuids(one_card(model, today, patient_view_request(), "same"))
    order = uuids(one_card(model, today, order_sign_request(), "same"))
    assert not set(patient) & set(order)


def test_uuid4_without_instance_req_80(model: Model, today: date, patient_view_request: PatientView) -> None:
    call = patient_view_request()
    first = uuids(one_card(model, today, call, None))
    second = uuids(one_card(model, today, call, None))
    assert all(uuid.UUID(u).version == 4 for u in first + second)
    assert len(set(first + second)) == 4


# -- source ----------------------------------------------------------------------------------------


def test_source_reqs_90_105_107_115(card: dict[str, Any]) -> None:
    """req 90, 105, 106, 107, 108, 111, 112, 113, 115, 116, 220: source with a label string (the link text), an absolute url,
    a topic Coding (with its optional display), and no icon (optional; none is sent, so no unverified image)."""
    source = card["source"]
    assert isinstance(source["label"], str) and source["label"]
    assert source["url"] == DOCS_URL
    assert is_absolute_url(source["url"])
    if "icon" in source:
        assert is_absolute_url(source["icon"]) and source["icon"].endswith(".png")
    topic = source["topic"]
    assert set(topic) == {"system", "code", "display"}
    assert all(isinstance(v, str) and v for v in topic.values())


def test_source_url_is_not_a_drill_down_req_109(model: Model, today: date, patient_view_request: PatientView) -> None:
    """req 109: the source url is the same for every patient and carries no patient context."""
    calls = [patient_view_request(seed=seed) for seed in (1, 2)]
    cards = [one_card(model, today, call) for call in calls]
    assert cards[0]["source"] == cards[1]["source"]
    for call, card in zip(calls, cards, strict=True):
        assert call.context["patientId"] not in card["source"]["url"]
        assert all(call.context["patientId"] not in link["url"] for link in card["links"])


def test_source_label_from_options(model: Model, today: date, factory: Factory) -> None:
    a = assess_resources(model, [*adult_with_knee_pain(factory), radiculopathy(factory), low_back_pain(factory)], today)
    (card,) = build_cards(model, a, CardOptions("https://docs.example.net/x", "Local label"), hook="patient-view")
    assert card["source"]["label"] == "Local label"
    assert card["source"]["url"] == "https://docs.example.net/x"


# -- suggestions and actions -----------------------------------------------------------------------


def test_suggestions_reqs_92_93_95_96(referral_card: dict[str, Any]) -> None:
    """req 92, 93, 94, 95, 96: an array of one suggestion, so selectionBehavior is present, a string, and "any" (the one value every known client accepts)."""
    card = referral_card
    assert isinstance(card["suggestions"], list)
    assert len(card["suggestions"]) == 1
    assert card["selectionBehavior"] == "any"


def test_suggestion_reqs_117_121_122_124(referral_card: dict[str, Any]) -> None:
    """req 117, 119, 120, 121, 122, 123, 124, 125: label string, uuid string, isRecommended a boolean and false (not
    `any`), and an array holding one action, so selecting the suggestion selects exactly that action."""
    card = referral_card
    (suggestion,) = card["suggestions"]
    assert isinstance(suggestion["label"], str) and suggestion["label"]
    assert "consider" in suggestion["label"].lower()
    assert isinstance(suggestion["uuid"], str)
    if "isRecommended" in suggestion:
        assert isinstance(suggestion["isRecommended"], bool)
        assert suggestion["isRecommended"] is False or card["selectionBehavior"] == "any"
    assert isinstance(suggestion["actions"], list) and len(suggestion["actions"]) == 1


def test_action_reqs_127_128_130_131(referral_card: dict[str, Any]) -> None:
    """req 127, 128, 129, 130, 131, 132, 133, 134, 135: type create with a description string to show the user and a
    new FHIR resource; no update or delete, so no partial resource and no resourceId."""
    (action,) = referral_card["suggestions"][0]["actions"]
    assert action["type"] == "create"
    assert isinstance(action["description"], str) and action["description"]
    assert "resourceId" not in action
    resource = action["resource"]
    assert "id" not in resource  # a new resource
    ServiceRequest.model_validate(resource)


def referral_of(card: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = card["suggestions"][0]["actions"][0]["resource"]
    return resource


def test_referral_resource(model: Model, today: date, patient_view_request: PatientView) -> None:
    call = patient_view_request()
    evaluation = call.run(model, today)
    resource = referral_of(evaluation.cards[0])
    ServiceRequest.model_validate(resource)
    assert resource["resourceType"] == "ServiceRequest"
    assert resource["status"] == "draft"
    assert resource["intent"] == "order"
    assert resource["subject"] == {"reference": f"Patient/{call.context['patientId']}"}
    assert resource["requester"] == {"reference": "Practitioner/dr-1"}
    assert resource["code"]["coding"] == [{"system": SNOMED, "code": "308481009", "display": "Referral to orthopedic surgeon"}]
    assert resource["code"]["text"] == "Lumbar spine evaluation"
    assert resource["priority"] == "routine"
    assert resource["category"] == [{"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]}]
    suggestion = evaluation.cards[0]["suggestions"][0]
    assert resource["identifier"] == [{"system": "urn:spine-cds:suggestion", "value": suggestion["uuid"]}]
    assert "performerType" not in resource
    assert resource["note"][0]["text"]
    a = evaluation.assessment
    reasons = [r["reference"] for r in resource["reasonReference"]]
    # the knee complaint first, then the spinal findings, each once
    assert reasons[0] == a.knee_complaint[0].reference
    spinal = {r for c in a.findings if c.signal.spinal for r in c.references()}
    assert set(reasons[1:]) == spinal
    assert len(reasons) == len(set(reasons))
    assert all(r.split("/")[0] in ("Condition", "Observation") for r in reasons)


def test_referral_reasons_exclude_patient_and_alternatives(model: Model, today: date, patient_view_request: PatientView) -> None:
    evaluation = patient_view_request("l3-l4-knee-oa").run(model, today)
    reasons = [r["reference"] for r in referral_of(evaluation.cards[0])["reasonReference"]]
    assert not any(r.startswith("Patient/") for r in reasons)
    (knee_oa,) = evaluation.assessment.alternatives
    assert not set(knee_oa.references()) & set(reasons)


def test_referral_reasons_include_observations(today: date, factory: Factory) -> None:
    site_model = load_model(
        site={
            "codes": {
                "femoral_stretch_exam": [{"system": SITE, "code": "fnst"}],
                "patellar_reflex_exam": [{"system": SITE, "code": "knee-jerk"}],
            }
        }
    )
    exam = factory.observation(SITE, "fnst", "Femoral nerve stretch test")
    exam["valueBoolean"] = True
    reflex = factory.observation(SITE, "knee-jerk", "Patellar reflex")
    reflex["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "L"}]}]
    resources = [*adult_with_knee_pain(factory), exam, reflex, radiculopathy(factory)]
    a = assess_resources(site_model, resources, today)
    assert a.band == "likely"
    assert {c.signal.key: c.points for c in a.findings}["root_exam_pair"] == 1.95
    (card,) = build_cards(site_model, a, CardOptions(DOCS_URL), hook="patient-view", patient_id=factory.patient_id)
    reasons = {r["reference"] for r in referral_of(card)["reasonReference"]}
    assert {f"Observation/{exam['id']}", f"Observation/{reflex['id']}"} <= reasons
    ServiceRequest.model_validate(referral_of(card))


def test_requester_only_from_a_reference_user_id(model: Model, today: date, patient_view_request: PatientView) -> None:
    call = patient_view_request()
    call.context["userId"] = "dr-1"
    resource = referral_of(one_card(model, today, call))
    assert "requester" not in resource
    ServiceRequest.model_validate(resource)


def test_referral_from_site_configuration(today: date, patient_view_request: PatientView) -> None:
    site_model = load_model(site={"referral": {"code": SITE_REFERRAL, "performer_type": SPINE_PERFORMER}})
    resource = referral_of(one_card(site_model, today, patient_view_request()))
    ServiceRequest.model_validate(resource)
    assert resource["code"]["coding"] == [SITE_REFERRAL]
    assert resource["code"]["text"] == "Lumbar spine evaluation"
    assert resource["performerType"] == {"coding": [SPINE_PERFORMER]}


def test_referral_site_performer_only(today: date, patient_view_request: PatientView) -> None:
    site_model = load_model(site={"referral": {"performer_type": SPINE_PERFORMER}})
    resource = referral_of(one_card(site_model, today, patient_view_request()))
    assert resource["code"]["coding"][0]["code"] == "308481009"
    assert resource["performerType"] == {"coding": [SPINE_PERFORMER]}


# -- overrideReasons and links ---------------------------------------------------------------------


def test_override_reasons_reqs_98_100_136(card: dict[str, Any]) -> None:
    """req 98, 99, 100, 136: the override reasons are an array of Codings, each with a human-readable display."""
    reasons = card["overrideReasons"]
    assert reasons == list(OVERRIDE_REASONS)
    assert len(reasons) == 4
    assert len({r["code"] for r in reasons}) == 4
    for reason in reasons:
        assert set(reason) == {"system", "code", "display"}
        assert all(isinstance(v, str) and v for v in reason.values())
    assert {r["code"] for r in reasons} == {
        "already-evaluated",
        "knee-cause-confirmed",
        "patient-declines",
        "not-clinically-relevant",
    }


def test_every_override_reason_has_one_of_the_six_hl7_non_adherence_categories() -> None:
    assert set(NON_ADHERENCE_CATEGORY) == {r["code"] for r in OVERRIDE_REASONS}
    assert set(NON_ADHERENCE_CATEGORY.values()) <= set(NON_ADHERENCE_CATEGORIES)
    assert len(NON_ADHERENCE_CATEGORIES) == 6
    assert NON_ADHERENCE_CATEGORY["patient-declines"] == "does-not-align-preferences"


def test_links_reqs_103_138_139_141_142_147(card: dict[str, Any]) -> None:
    """req 103, 104, 138, 139, 140, 141, 142, 144, 145, 146, 147: an array of links with a label string, an absolute url
    (no patient context in it) and type absolute, so no appContext."""
    links = card["links"]
    assert isinstance(links, list) and links
    for link in links:
        assert isinstance(link["label"], str) and link["label"]
        assert is_absolute_url(link["url"])
        assert link["type"] == "absolute"
        assert link["url"] == DOCS_URL
        assert "appContext" not in link


# -- the whole card --------------------------------------------------------------------------------


def test_no_empty_values_anywhere(card: dict[str, Any]) -> None:
    """No None, "", [] or {} anywhere in a card: clients reject nulls."""
    for path, value in walk(card):
        assert value is not None, path
        assert value not in ("", [], {}), path


def test_card_fields_are_known(card: dict[str, Any]) -> None:
    assert set(card) <= {
        "uuid",
        "summary",
        "detail",
        "indicator",
        "source",
        "suggestions",
        "selectionBehavior",
        "overrideReasons",
        "links",
    }
    assert {"summary", "indicator", "source"} <= set(card)


@pytest.mark.parametrize("hook_call", ["order_sign_request", "order_select_request"])
def test_order_cards_follow_the_same_rules(model: Model, today: date, request: pytest.FixtureRequest, hook_call: str) -> None:
    card = one_card(model, today, request.getfixturevalue(hook_call)())
    assert 0 < len(card["summary"]) < 140
    assert "consider" in card["summary"].lower()
    assert card["selectionBehavior"] == "any"
    ServiceRequest.model_validate(referral_of(card))
    for path, value in walk(card):
        assert value not in (None, "", [], {}), path


def test_prune() -> None:
    assert prune({"a": None, "b": "", "c": [], "d": {}, "e": [None, {"f": None}], "g": False, "h": 0}) == {"g": False, "h": 0}


def test_patient_reference_fallback(model: Model, today: date, factory: Factory) -> None:
    a: Assessment = assess_resources(
        model, [*adult_with_knee_pain(factory), radiculopathy(factory), low_back_pain(factory), thigh_pain(factory)], today
    )
    (card,) = build_cards(model, a, CardOptions(DOCS_URL), hook="patient-view")
    assert referral_of(card)["subject"] == {"reference": f"Patient/{factory.patient_id}"}


# -- traceability ----------------------------------------------------------------------------------

# Service rules in 80-147 that no test here can check, and why
NOT_CHECKED = {
    110: "no context-specific drill-down is offered (conditionality False)",
}


def cited_requirements() -> set[int]:
    """IDs cited as "req N, M: ..." at the start of a docstring in this file."""
    text = Path(__file__).read_text(encoding="utf-8")
    cited: set[int] = set()
    for match in re.finditer(r'"""reqs? ([0-9, ]+):', text):
        cited |= {int(n) for n in re.findall(r"\d+", match.group(1))}
    return cited


@pytest.mark.shared_data
def test_every_service_card_rule_is_cited(shared_data: Path) -> None:
    """Every Service rule about cards, source, suggestion, action, link and overrideReasons (IDs 80-147) has a test."""
    with (shared_data / "cds-hooks" / "cds-hooks-2.0-requirements.csv").open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["ID"].isdigit() and 80 <= int(row["ID"]) <= 147]
    service_rules = {int(row["ID"]) for row in rows if "Service" in row["Actors"]}
    assert len(service_rules) > 50
    cited = cited_requirements()
    assert service_rules - cited - set(NOT_CHECKED) == set()
    assert cited <= set(range(80, 148)) | set(range(214, 221))  # card rules and the Coding rules cards rely on


def test_the_referral_names_a_clinician_requester_only(model: Model, today: date, patient_view_request: Any) -> None:
    call = patient_view_request()
    call.context["userId"] = "Patient/self-123"
    resource = call.run(model, today).cards[0]["suggestions"][0]["actions"][0]["resource"]
    assert "requester" not in resource
    call.context["userId"] = "PractitionerRole/pr-9"
    resource = call.run(model, today, instance="other").cards[0]["suggestions"][0]["actions"][0]["resource"]
    assert resource["requester"] == {"reference": "PractitionerRole/pr-9"}


# -- card shape per client -------------------------------------------------------------------------


def _card_with(model: Model, today: date, patient_view_request: PatientView, options: CardOptions) -> dict[str, Any]:
    call = patient_view_request("radiculopathy-knee-pain")
    cards = evaluate(
        model, SERVICES_BY_ID[call.service_id], call.context, call.prefetch, options, today=today, instance="i-1"
    ).cards
    assert len(cards) == 1
    return cards[0]


def test_plain_detail_keeps_the_words_and_drops_the_markup(model: Model, today: date, patient_view_request: PatientView) -> None:
    markdown = _card_with(model, today, patient_view_request, CardOptions(DOCS_URL))
    plain = _card_with(model, today, patient_view_request, CardOptions(DOCS_URL, detail_format="plain"))
    assert "**" in markdown["detail"] and "**" not in plain["detail"]
    assert "](" not in plain["detail"] and f"Why, sources ({DOCS_URL})" in plain["detail"]
    assert plain_text(markdown["detail"]) == plain["detail"]
    assert {k: v for k, v in plain.items() if k != "detail"} == {k: v for k, v in markdown.items() if k != "detail"}


def test_links_off_the_allow_list_are_left_off(model: Model, today: date, patient_view_request: PatientView) -> None:
    allowed = _card_with(model, today, patient_view_request, CardOptions(DOCS_URL, link_allowlist=("https://cds.example.org/",)))
    refused = _card_with(
        model, today, patient_view_request, CardOptions(DOCS_URL, link_allowlist=("https://intranet.example.org/",))
    )
    assert allowed["links"][0]["url"] == DOCS_URL and allowed["source"]["url"] == DOCS_URL
    assert "links" not in refused and "url" not in refused["source"]
    assert refused["source"]["label"] and refused["source"]["topic"] == TOPIC


def test_a_site_orderable_joins_the_referral_code(model: Model, today: date, patient_view_request: PatientView) -> None:
    orderable = {"system": "urn:oid:1.2.3.4", "code": "REF1", "display": "Spine clinic referral"}
    card = _card_with(model, today, patient_view_request, CardOptions(DOCS_URL, order_codings=(orderable,)))
    codings = card["suggestions"][0]["actions"][0]["resource"]["code"]["coding"]
    assert codings[0]["system"] == "http://snomed.info/sct" and codings[1:] == [orderable]


def test_topic_codes_are_static_and_alphanumeric_and_a_red_flag_has_its_own() -> None:
    for topic in (TOPIC, RED_FLAG_TOPIC):
        assert re.fullmatch(r"[A-Za-z0-9]{1,100}", topic["code"])
    assert TOPIC["code"] != RED_FLAG_TOPIC["code"]
