"""Red flags: a record that holds one never gets a routine spine-origin card or a referral suggestion.

The families are those of the clinical-evidence notes ("Red flags"), in ICD-10-CM and SNOMED CT (the model
file's `red_flag_spine` and `knee_emergency` value sets).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from hooks.cards import CardOptions, build_cards
from hooks.model import Model
from hooks.synthetic import ICD10, SNOMED, Factory, radiculopathy_knee_pain
from tests.hooks.conftest import HookCall, assess_resources

RED_FLAGS = [
    ("G83.4", "Cauda equina syndrome"),
    ("G06.1", "Intraspinal abscess and granuloma"),
    ("M46.26", "Osteomyelitis of vertebra, lumbar region"),
    ("M46.46", "Discitis, unspecified, lumbar region"),
    ("S32.009A", "Unspecified fracture of unspecified lumbar vertebra, initial encounter"),
    ("M48.56XA", "Collapsed vertebra, lumbar region, initial encounter"),
    ("M80.08XA", "Age-related osteoporosis with current pathological fracture, vertebra(e)"),
    ("C79.51", "Secondary malignant neoplasm of bone"),
    ("C41.2", "Malignant neoplasm of vertebral column"),
    ("M21.371", "Foot drop, right foot"),
    ("M00.061", "Staphylococcal arthritis, right knee"),
    ("I82.411", "Acute embolism and thrombosis of right femoral vein"),
]
SNOMED_RED_FLAGS = [
    ("192970008", "Cauda equina syndrome"),
    ("1427008", "Intraspinal abscess"),
    ("203241002", "Osteomyelitis of vertebra"),
    ("2304001", "Discitis"),
    ("125608002", "Fracture of lumbar spine"),
    ("240198002", "Osteoporotic vertebral collapse"),
    ("94602001", "Secondary malignant neoplasm of vertebral column"),
    ("6077001", "Foot-drop"),
    ("239777004", "Knee pyogenic arthritis"),
    ("404223003", "Deep venous thrombosis of lower extremity"),
]


def with_red_flag(factory: Factory, code: str, display: str, **kw: Any) -> list[dict[str, Any]]:
    """The `likely` radiculopathy profile (knee pain, radiculopathy, back and thigh pain) plus one diagnosis."""
    return [*radiculopathy_knee_pain(factory), factory.condition(ICD10, code, display, **kw)]


def cards_for(model: Model, resources: list[dict[str, Any]], today: date, hook: str = "patient-view") -> list[dict[str, Any]]:
    assessment = assess_resources(model, resources, today)
    return build_cards(model, assessment, CardOptions("https://cds.example.org/model"), hook=hook, instance="call-1")


@pytest.mark.parametrize(("code", "display"), RED_FLAGS, ids=[c for c, _ in RED_FLAGS])
def test_a_red_flag_gives_one_warning_that_names_it_and_no_referral(
    model: Model, today: date, factory: Factory, code: str, display: str
) -> None:
    [card] = cards_for(model, with_red_flag(factory, code, display, onset_days_ago=3), today)
    assert card["indicator"] == "warning"
    named = f"Red flag in the record: {display}. Needs urgent assessment"
    # the record's own name for it, unless that would not fit the summary's 140 characters
    assert card["summary"] == (named if len(named) < 140 else "Red flag in the record: needs urgent assessment")
    assert display in card["detail"] and code in card["detail"]
    assert "urgent assessment" in card["detail"] and "does not triage red flags" in card["detail"]
    assert "suggestions" not in card  # no routine referral
    assert "lumbar spine" not in card["summary"].lower()


@pytest.mark.parametrize(("code", "display"), SNOMED_RED_FLAGS, ids=[c for c, _ in SNOMED_RED_FLAGS])
def test_a_snomed_coded_red_flag_stops_the_routine_card_too(
    model: Model, today: date, factory: Factory, code: str, display: str
) -> None:
    resources = [*radiculopathy_knee_pain(factory), factory.condition(SNOMED, code, display, onset_days_ago=3)]
    [card] = cards_for(model, resources, today)
    assert card["summary"] == f"Red flag in the record: {display}. Needs urgent assessment"
    assert "suggestions" not in card and code in card["detail"]


def test_a_differential_red_flag_still_warns(model: Model, today: date, factory: Factory) -> None:
    """A suspected cauda equina syndrome is as urgent as a confirmed one."""
    resources = with_red_flag(factory, "G83.4", "Cauda equina syndrome", verification="differential")
    [card] = cards_for(model, resources, today)
    assert card["summary"].startswith("Red flag in the record: Cauda equina syndrome")


def test_the_assessment_keeps_its_findings_and_names_the_red_flag(model: Model, today: date, factory: Factory) -> None:
    assessment = assess_resources(model, with_red_flag(factory, "G83.4", "Cauda equina syndrome"), today)
    assert assessment.band == "likely" and assessment.red_flagged and not assessment.actionable
    [flag] = assessment.to_dict()["red_flags"]
    assert flag["code"].endswith("|G83.4") and flag["value_set"] == "red_flag_spine"


def test_a_septic_knee_never_points_at_the_spine(model: Model, today: date, factory: Factory) -> None:
    [card] = cards_for(model, with_red_flag(factory, "M00.061", "Staphylococcal arthritis, right knee"), today)
    assert "spine" not in card["summary"].lower()
    assert "suggestions" not in card and "Staphylococcal arthritis, right knee" in card["detail"]


def test_order_hooks_warn_too_when_a_knee_order_is_drafted(
    model: Model, today: date, order_sign_request: Callable[..., HookCall]
) -> None:
    [card] = order_sign_request("cauda-equina").run(model, today).cards
    assert card["indicator"] == "warning" and "suggestions" not in card
    assert "Cauda equina syndrome" in card["summary"]


def test_an_old_resolved_red_flag_does_not_stop_the_routine_card(model: Model, today: date, factory: Factory) -> None:
    resources = with_red_flag(factory, "S32.009A", "Fracture of lumbar vertebra", clinical="resolved", onset_days_ago=800)
    [card] = cards_for(model, resources, today)
    assert card["summary"].endswith("consider a lumbar spine source")
    assert card["suggestions"]


def test_a_recent_red_flag_counts_whatever_its_status(model: Model, today: date, factory: Factory) -> None:
    resources = with_red_flag(factory, "G06.1", "Spinal epidural abscess", clinical="resolved", onset_days_ago=20)
    [card] = cards_for(model, resources, today)
    assert "suggestions" not in card and "Spinal epidural abscess" in card["detail"]


def test_a_refuted_red_flag_is_ignored(model: Model, today: date, factory: Factory) -> None:
    resources = with_red_flag(factory, "G83.4", "Cauda equina syndrome", verification="refuted")
    [card] = cards_for(model, resources, today)
    assert card["suggestions"]


def test_every_routine_card_says_it_does_not_screen_for_red_flags(model: Model, today: date, factory: Factory) -> None:
    [card] = cards_for(model, radiculopathy_knee_pain(factory), today)
    assert "does not screen for red flags" in card["detail"]


def test_a_red_flag_without_a_knee_complaint_makes_no_card(model: Model, today: date, factory: Factory) -> None:
    """The service speaks only about knee pain: a cancer history at an unrelated visit is not its card."""
    resources = [factory.patient(60), factory.condition(ICD10, "C79.51", "Secondary malignant neoplasm of bone")]
    assert cards_for(model, resources, today) == []
