"""The trigger points a site turns on (encounter-start, problem-list-item-create, appointment-book), over real HTTP.

Off by default, offered only when named in the `services` setting; once on, each answers a card for an
actionable record and none otherwise, and refuses a call missing what its hook requires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cds_service.settings import SettingsError, load_settings
from hooks.services import DEFAULT_ENABLED
from tests.cds_service.requests import appointment_book, encounter_start, patient_view, problem_added
from tests.support import RunningService, assert_cards_response, card_problems, error_of

Body = Callable[[], dict[str, Any]]
StartService = Callable[..., RunningService]

ENCOUNTER_START = "spine-knee-encounter-start"
PROBLEM_ADDED = "spine-knee-problem-added"
APPOINTMENT_BOOK = "spine-knee-appointment-book"
NEW_SERVICES = {
    ENCOUNTER_START: "encounter-start",
    PROBLEM_ADDED: "problem-list-item-create",
    APPOINTMENT_BOOK: "appointment-book",
}
DEFAULT_SERVICES = {
    "spine-knee-patient-view": "patient-view",
    "spine-knee-order-select": "order-select",
    "spine-knee-order-sign": "order-sign",
}
BODIES: dict[str, Body] = {ENCOUNTER_START: encounter_start, PROBLEM_ADDED: problem_added, APPOINTMENT_BOOK: appointment_book}
# per service: the summary its card starts with, and calls that must answer no card
CARD_SUMMARY = {
    ENCOUNTER_START: "Right knee pain with",
    PROBLEM_ADDED: "Right knee pain with",
    APPOINTMENT_BOOK: "Knee procedure booked;",
}
NO_CARD: dict[str, dict[str, Body]] = {
    ENCOUNTER_START: {"knee OA only": lambda: encounter_start("knee-oa-only"), "child": lambda: encounter_start("child")},
    PROBLEM_ADDED: {
        "hypertension added": lambda: problem_added(code="I10"),
        "low back pain added": lambda: problem_added(code="M54.50"),
        "knee pain added, already referred": lambda: problem_added("already-referred"),
    },
    APPOINTMENT_BOOK: {
        "patient user": lambda: appointment_book(user_id="Patient/self"),
        "related-person user": lambda: appointment_book(user_id="RelatedPerson/parent-1"),
        "shoulder arthroscopy": lambda: appointment_book(service_type="29827"),
        "office visit": lambda: appointment_book(service_type="99213"),
        "cancelled": lambda: appointment_book(status="cancelled"),
        "knee OA only": lambda: appointment_book("knee-oa-only"),
    },
}


def path(service_id: str) -> str:
    return f"/cds-services/{service_id}"


@pytest.fixture
def enabled(service_factory: StartService) -> RunningService:
    """The service offering the defaults and the three new trigger points."""
    return service_factory(services=[*DEFAULT_ENABLED, *NEW_SERVICES])


# -- cards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("service_id", NEW_SERVICES)
def test_a_card_for_an_actionable_record_and_none_otherwise(enabled: RunningService, service_id: str) -> None:
    cards = assert_cards_response(enabled.post(path(service_id), BODIES[service_id]()))
    assert len(cards) == 1
    (card,) = cards
    assert card_problems(card) == []
    assert card["indicator"] == "warning"
    assert card["summary"].startswith(CARD_SUMMARY[service_id])
    assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "ServiceRequest"
    for case, body in NO_CARD[service_id].items():
        response = enabled.post(path(service_id), body())
        assert assert_cards_response(response) == [], case
        assert response.json() == {"cards": []}, case


def test_encounter_start_answers_the_patient_view_card(enabled: RunningService) -> None:
    """Same record, same card content (the uuids are per hook)."""
    (started,) = assert_cards_response(enabled.post(path(ENCOUNTER_START), encounter_start()))
    (viewed,) = assert_cards_response(enabled.post(path("spine-knee-patient-view"), patient_view()))
    assert started["summary"] == viewed["summary"]
    assert started["detail"] == viewed["detail"]
    assert started["uuid"] != viewed["uuid"]


def test_appointment_book_red_flag_card(enabled: RunningService) -> None:
    """A red-flag record booking a knee procedure gets the red-flag card, not the routine one."""
    (card,) = assert_cards_response(enabled.post(path(APPOINTMENT_BOOK), appointment_book("cauda-equina")))
    assert card["summary"].startswith("Red flag in the record")
    assert card["source"]["topic"]["code"] == "SpineOriginRedFlag"
    assert "suggestions" not in card


# -- discovery and enabling ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        (None, DEFAULT_SERVICES),
        ([APPOINTMENT_BOOK], {APPOINTMENT_BOOK: "appointment-book"}),
        ([*DEFAULT_ENABLED, *NEW_SERVICES], DEFAULT_SERVICES | NEW_SERVICES),
    ],
    ids=["defaults", "appointment-book-only", "all"],
)
def test_discovery_lists_only_the_enabled_services(
    service_factory: StartService, services: list[str] | None, expected: dict[str, str]
) -> None:
    running = service_factory() if services is None else service_factory(services=services)
    response = running.get("/cds-services")
    assert response.status_code == 200
    listed = {s["id"]: s["hook"] for s in response.json()["services"]}
    assert listed == expected


def test_a_disabled_service_is_404(service_factory: StartService) -> None:
    defaults = service_factory()
    for service_id, body in BODIES.items():
        response = defaults.post(path(service_id), body())
        assert response.status_code == 404, service_id
        assert error_of(response)["code"] == "unknown_service"
    only_booking = service_factory(services=[APPOINTMENT_BOOK])
    response = only_booking.post(path("spine-knee-patient-view"), patient_view())
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_service"


def test_an_unknown_service_in_the_settings_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="SPINE_CDS_SERVICES") as raised:
        load_settings({"services": [ENCOUNTER_START, "spine-knee-no-such-hook"]}, environ={})
    assert "spine-knee-no-such-hook" in str(raised.value)
    assert load_settings({"services": [APPOINTMENT_BOOK, APPOINTMENT_BOOK]}, environ={}).services == [APPOINTMENT_BOOK]


# -- refusals -------------------------------------------------------------------------------------


def test_a_missing_required_context_field_is_400_naming_it(enabled: RunningService) -> None:
    required = {
        ENCOUNTER_START: ("userId", "patientId", "encounterId"),
        PROBLEM_ADDED: ("userId", "patientId", "conditions"),
        APPOINTMENT_BOOK: ("userId", "patientId", "appointments"),
    }
    for service_id, fields in required.items():
        for field in fields:
            for missing in ("absent", "null"):
                body = BODIES[service_id]()
                if missing == "absent":
                    del body["context"][field]
                else:
                    body["context"][field] = None
                response = enabled.post(path(service_id), body)
                case = (service_id, field, missing)
                assert response.status_code == 400, case
                error = error_of(response)
                assert error["code"] == "invalid_request", case
                assert f"context.{field}" in error["message"], case


def test_conditions_or_appointments_that_are_not_a_bundle_are_400(enabled: RunningService) -> None:
    for service_id, field in ((PROBLEM_ADDED, "conditions"), (APPOINTMENT_BOOK, "appointments")):
        entry = BODIES[service_id]()["context"][field]["entry"][0]["resource"]
        for value in (entry, [entry], "Bundle", {"resourceType": "Parameters"}):
            body = BODIES[service_id]()
            body["context"][field] = value
            response = enabled.post(path(service_id), body)
            case = (service_id, field, value if isinstance(value, str) else type(value).__name__)
            assert response.status_code == 400, case
            error = error_of(response)
            assert error["code"] == "invalid_request", case
            assert f"context.{field} must be a FHIR Bundle" in error["message"], case


def test_the_wrong_hook_for_a_new_service_is_400(enabled: RunningService) -> None:
    for service_id in NEW_SERVICES:
        response = enabled.post(path(service_id), patient_view())
        assert response.status_code == 400, service_id
        assert error_of(response)["code"] == "wrong_hook", service_id


def test_a_context_field_another_hook_defines_is_not_checked(enabled: RunningService) -> None:
    """Unknown context fields pass through: a patient-view call carrying `conditions` of any shape is answered."""
    body = patient_view()
    body["context"]["conditions"] = ["not", "a", "Bundle"]
    assert len(assert_cards_response(enabled.post("/cds-services/spine-knee-patient-view", body))) == 1
