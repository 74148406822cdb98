"""Every synthetic profile through real HTTP: the card the EHR gets is the one the profile intends.

The population tests (tests/worker/test_population.py) hold the same profiles to the same outcomes on
the worklist path, so one model decides both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hooks.synthetic import PROFILES, generate
from tests.cds_service.requests import TODAY, patient_view_of
from tests.support import LogReader, RunningService, assert_cards_response

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"


def card_kind(cards: list[dict[str, Any]]) -> str:
    if not cards:
        return "none"
    (card,) = cards
    if card["summary"].startswith("Red flag in the record"):
        return "red-flag warning"
    return f"{card['indicator']} {'with referral' if card.get('suggestions') else 'examine first'}"


INTENDED = {"likely": "warning with referral", "possible": "info examine first", "red-flag": "red-flag warning"}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_each_profile_gets_its_intended_card_over_http(module_service: RunningService, profile: Any) -> None:
    cards = assert_cards_response(module_service.post(PATIENT_VIEW, patient_view_of(generate(profile, today=TODAY))))
    assert card_kind(cards) == INTENDED.get(profile.expected, "none")


def test_the_signed_suggestion_silences_the_card_whatever_its_reasons(
    module_service: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    """The EHR keeps the drafted referral (with the identifier the service wrote) but drops its reasons and code
    text; the next chart open sees it in the record and shows no card."""
    resources = generate("radiculopathy-knee-pain", seed=31, today=TODAY)
    (card,) = assert_cards_response(module_service.post(PATIENT_VIEW, patient_view_of(resources)))
    drafted = dict(card["suggestions"][0]["actions"][0]["resource"])
    for dropped in ("reasonReference", "note", "category"):
        drafted.pop(dropped, None)
    signed = drafted | {"id": "signed-referral-1", "status": "active", "authoredOn": TODAY.isoformat()}
    body = patient_view_of([*resources, signed])
    assert assert_cards_response(module_service.post(PATIENT_VIEW, body)) == []
    row = read_log(module_service).decision(hook_instance=body["hookInstance"])
    assert row["assessment"]["suppressions"] == [
        {"reason": "a spine referral is already active", "reference": "ServiceRequest/signed-referral-1"}
    ]
