"""The trigger points a site turns on: encounter-start, problem-list-item-create and appointment-book.

Each gives a card only when what it concerns is about the knee (a visit, a knee problem being added, a knee
procedure being booked) and the record is actionable; a red-flag record gets the red-flag card instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from hooks.cards import RED_FLAG_TOPIC, TOPIC
from hooks.model import Model
from hooks.services import Evaluation
from hooks.synthetic import ICD10, SNOMED, Factory, Resource, generate, prefetch_for, searchset
from tests.hooks.conftest import CPT, HookCall, low_back_pain, radiculopathy, thigh_pain

HookRequest = Callable[..., HookCall]
ResourceFactory = Callable[[Factory], Resource]
PRACTITIONER = "Practitioner/dr-1"
# records the model means to give a routine card, a red-flag card, or nothing
ACTIONABLE = {"radiculopathy-knee-pain": "warning", "double-coded-episode": "info", "elderly-stenosis": "info"}
RED_FLAGGED = ("cauda-equina", "septic-knee")
NOT_ACTIONABLE = ("knee-oa-only", "acl-tear-only", "child", "already-referred", "resolved-knee-complaint", "deceased")


def without_uuids(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The cards with their call-specific uuids (card, suggestion, referral identifier) blanked."""
    text = json.dumps(evaluation.cards)
    for value in [*evaluation.card_uuids(), *evaluation.suggestion_uuids()]:
        text = text.replace(value, "<uuid>")
    cards: list[dict[str, Any]] = json.loads(text)
    return cards


def assert_red_flag_card(evaluation: Evaluation) -> None:
    (card,) = evaluation.cards
    assert card["source"]["topic"] == RED_FLAG_TOPIC
    assert card["summary"].startswith("Red flag in the record")
    assert "suggestions" not in card


# -- resources -------------------------------------------------------------------------------------


def right_knee_pain(f: Factory) -> Resource:
    return f.condition(ICD10, "M25.561", "Pain in right knee", onset_days_ago=0)


def right_knee_oa(f: Factory) -> Resource:
    return f.condition(ICD10, "M17.11", "Unilateral primary osteoarthritis, right knee", onset_days_ago=0)


def new_low_back_pain(f: Factory) -> Resource:
    return low_back_pain(f, onset_days_ago=0)


def hypertension(f: Factory) -> Resource:
    return f.condition(ICD10, "I10", "Essential (primary) hypertension", onset_days_ago=0)


def lumbar_record(f: Factory) -> list[Resource]:
    """A 58-year-old with lumbar radiculopathy, low back and right thigh pain, and no knee complaint."""
    return [f.patient(58), radiculopathy(f, onset_days_ago=200), low_back_pain(f, onset_days_ago=400), thigh_pain(f)]


def appointment(
    system: str, code: str, display: str, *, status: str = "proposed", coded_in: str = "serviceType"
) -> ResourceFactory:
    """An Appointment being booked, coded in `serviceType`, `appointmentType` or `reasonCode`."""

    def make(f: Factory) -> Resource:
        concept = {"coding": [{"system": system, "code": code, "display": display}]}
        return {
            "resourceType": "Appointment",
            "id": f.new_id(),
            "status": status,
            coded_in: concept if coded_in == "appointmentType" else [concept],
            "start": f"{f.days_ago(-14)}T09:00:00Z",
            "end": f"{f.days_ago(-14)}T10:00:00Z",
            "participant": [
                {"actor": {"reference": f"Patient/{f.patient_id}"}, "status": "needs-action"},
                {"actor": {"reference": "Practitioner/surgeon-1"}, "status": "needs-action"},
            ],
        }

    make.__name__ = f"{display} ({status})"
    return make


knee_arthroscopy = appointment(CPT, "29881", "Arthroscopy, knee, surgical; with meniscectomy")


# -- hook calls ------------------------------------------------------------------------------------


@pytest.fixture
def encounter_start_request(today: date) -> HookRequest:
    """An encounter-start call for a synthetic profile."""

    def make(profile: str = "radiculopathy-knee-pain") -> HookCall:
        resources = generate(profile, today=today)
        context = {"userId": PRACTITIONER, "patientId": resources[0]["id"], "encounterId": "enc-1"}
        return HookCall("spine-knee-encounter-start", context, prefetch_for(resources))

    return make


@pytest.fixture
def problem_added_request(today: date) -> HookRequest:
    """A problem-list-item-create call adding `added` to `record` (a profile name or a record factory)."""

    def make(record: str | Callable[[Factory], list[Resource]], *added: ResourceFactory) -> HookCall:
        resources = generate(record, today=today) if isinstance(record, str) else record(Factory(seed=7, today=today))
        factory = Factory(seed=99, today=today, patient_id=resources[0]["id"])
        conditions = searchset([make_condition(factory) for make_condition in added]) | {"type": "collection"}
        context = {"userId": PRACTITIONER, "patientId": resources[0]["id"], "conditions": conditions}
        return HookCall("spine-knee-problem-added", context, prefetch_for(resources))

    return make


@pytest.fixture
def appointment_book_request(today: date) -> HookRequest:
    """An appointment-book call by `user` booking `appointments` for a synthetic profile."""

    def make(
        profile: str = "radiculopathy-knee-pain",
        appointments: tuple[ResourceFactory, ...] = (knee_arthroscopy,),
        user: str = PRACTITIONER,
    ) -> HookCall:
        resources = generate(profile, today=today)
        factory = Factory(seed=99, today=today, patient_id=resources[0]["id"])
        booked = searchset([make_appointment(factory) for make_appointment in appointments]) | {"type": "collection"}
        context = {"userId": user, "patientId": resources[0]["id"], "appointments": booked}
        return HookCall("spine-knee-appointment-book", context, prefetch_for(resources))

    return make


# -- encounter-start -------------------------------------------------------------------------------


class TestEncounterStart:
    @pytest.mark.parametrize("profile", [*ACTIONABLE, *RED_FLAGGED])
    def test_same_card_as_patient_view(
        self,
        model: Model,
        today: date,
        encounter_start_request: HookRequest,
        patient_view_request: HookRequest,
        profile: str,
    ) -> None:
        """A visit starting gives the card patient-view gives for the same record, bar the uuids."""
        started = encounter_start_request(profile).run(model, today)
        viewed = patient_view_request(profile).run(model, today)
        assert len(started.cards) == 1
        assert without_uuids(started) == without_uuids(viewed)

    @pytest.mark.parametrize("profile", ACTIONABLE)
    def test_routine_card_for_an_actionable_record(
        self, model: Model, today: date, encounter_start_request: HookRequest, profile: str
    ) -> None:
        (card,) = encounter_start_request(profile).run(model, today).cards
        assert card["indicator"] == ACTIONABLE[profile]
        assert card["source"]["topic"] == TOPIC
        assert not card["summary"].startswith(("Knee order drafted", "Knee procedure booked"))

    @pytest.mark.parametrize("profile", RED_FLAGGED)
    def test_red_flag_card_for_a_red_flag_record(
        self, model: Model, today: date, encounter_start_request: HookRequest, profile: str
    ) -> None:
        assert_red_flag_card(encounter_start_request(profile).run(model, today))

    @pytest.mark.parametrize("profile", NOT_ACTIONABLE)
    def test_no_card_for_a_record_that_is_not_actionable(
        self, model: Model, today: date, encounter_start_request: HookRequest, profile: str
    ) -> None:
        evaluation = encounter_start_request(profile).run(model, today)
        assert evaluation.cards == []
        assert not evaluation.assessment.actionable

    def test_uuids_differ_from_patient_view(
        self, model: Model, today: date, encounter_start_request: HookRequest, patient_view_request: HookRequest
    ) -> None:
        """Both hooks may share a hookInstance: feedback must still find the right card."""
        started = encounter_start_request().run(model, today)
        viewed = patient_view_request().run(model, today)
        assert set(started.card_uuids()).isdisjoint(viewed.card_uuids())
        assert set(started.suggestion_uuids()).isdisjoint(viewed.suggestion_uuids())


# -- problem-list-item-create ----------------------------------------------------------------------


class TestProblemAdded:
    @pytest.mark.parametrize("added", [right_knee_pain, right_knee_oa], ids=["knee-pain-M25.561", "knee-oa-M17.11"])
    def test_card_when_a_knee_problem_is_added_to_an_actionable_record(
        self, model: Model, today: date, problem_added_request: HookRequest, added: ResourceFactory
    ) -> None:
        evaluation = problem_added_request("radiculopathy-knee-pain", added).run(model, today)
        (card,) = evaluation.cards
        assert card["indicator"] == "warning"
        assert card["source"]["topic"] == TOPIC
        assert len(card["suggestions"]) == 1

    def test_added_knee_oa_joins_the_record(self, model: Model, today: date, problem_added_request: HookRequest) -> None:
        """The knee osteoarthritis being added is assessed with the record: it counts against a lumbar source."""
        (card,) = problem_added_request("radiculopathy-knee-pain", right_knee_oa).run(model, today).cards
        against = card["detail"].split("**Against:**", 1)[1]
        assert "Unilateral primary osteoarthritis, right knee (ICD-10-CM M17.11)" in against

    def test_added_knee_pain_makes_a_lumbar_record_eligible(
        self, model: Model, today: date, problem_added_request: HookRequest, patient_view_request: HookRequest
    ) -> None:
        """The record alone has no knee complaint; the knee pain being added is what the card is about."""
        before = problem_added_request(lumbar_record, hypertension).run(model, today)
        assert before.cards == []
        assert not before.assessment.eligible
        evaluation = problem_added_request(lumbar_record, right_knee_pain).run(model, today)
        assert evaluation.assessment.eligible and evaluation.assessment.band == "likely"
        (card,) = evaluation.cards
        assert card["summary"].startswith("Right knee pain with radiculopathy, lumbar region")
        assert card["detail"].startswith("**Knee complaint:** Pain in right knee (ICD-10-CM M25.561), active/confirmed")

    def test_a_knee_problem_among_others_is_enough(self, model: Model, today: date, problem_added_request: HookRequest) -> None:
        call = problem_added_request(lumbar_record, hypertension, right_knee_pain, new_low_back_pain)
        assert len(call.run(model, today).cards) == 1

    @pytest.mark.parametrize(
        "added", [new_low_back_pain, hypertension, radiculopathy], ids=["low-back-pain", "hypertension", "radiculopathy"]
    )
    def test_no_card_when_the_problem_added_is_not_about_the_knee(
        self, model: Model, today: date, problem_added_request: HookRequest, added: ResourceFactory
    ) -> None:
        evaluation = problem_added_request("radiculopathy-knee-pain", added).run(model, today)
        assert evaluation.cards == []
        assert evaluation.assessment.band == "likely"  # the record would warrant a card; the problem does not

    @pytest.mark.parametrize("status", ["entered-in-error", "refuted"])
    def test_a_knee_problem_entered_in_error_or_refuted_is_not_one_being_added(
        self, model: Model, today: date, problem_added_request: HookRequest, status: str
    ) -> None:
        def mistaken(factory: Factory) -> Resource:
            verification = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
            return right_knee_pain(factory) | {"verificationStatus": {"coding": [{"system": verification, "code": status}]}}

        assert problem_added_request("radiculopathy-knee-pain", mistaken).run(model, today).cards == []

    def test_no_card_when_only_low_back_pain_is_added_to_a_lumbar_record(
        self, model: Model, today: date, problem_added_request: HookRequest
    ) -> None:
        assert problem_added_request(lumbar_record, new_low_back_pain).run(model, today).cards == []

    def test_no_card_when_nothing_is_added(self, model: Model, today: date, problem_added_request: HookRequest) -> None:
        evaluation = problem_added_request("radiculopathy-knee-pain").run(model, today)
        assert evaluation.cards == []

    @pytest.mark.parametrize("profile", ["knee-oa-only", "already-referred", "child", "recent-lumbar-mri"])
    def test_no_card_for_a_record_that_is_not_actionable(
        self, model: Model, today: date, problem_added_request: HookRequest, profile: str
    ) -> None:
        evaluation = problem_added_request(profile, right_knee_pain).run(model, today)
        assert evaluation.cards == []
        assert not evaluation.assessment.actionable

    def test_knee_oa_without_recorded_pain_does_not_make_a_record_eligible(
        self, model: Model, today: date, problem_added_request: HookRequest
    ) -> None:
        evaluation = problem_added_request(lumbar_record, right_knee_oa).run(model, today)
        assert evaluation.cards == []
        assert evaluation.assessment.ineligible_reason == "knee osteoarthritis without recorded pain"

    def test_knee_pain_of_another_patient_is_not_read(
        self, model: Model, today: date, problem_added_request: HookRequest
    ) -> None:
        def elsewhere(_: Factory) -> Resource:
            return right_knee_pain(Factory(seed=5, today=today))  # its own, different patient

        evaluation = problem_added_request(lumbar_record, elsewhere).run(model, today)
        assert evaluation.cards == []
        assert not evaluation.assessment.eligible

    @pytest.mark.parametrize("profile", RED_FLAGGED)
    def test_red_flag_card_when_a_knee_problem_is_added(
        self, model: Model, today: date, problem_added_request: HookRequest, profile: str
    ) -> None:
        assert_red_flag_card(problem_added_request(profile, right_knee_pain).run(model, today))

    @pytest.mark.parametrize("profile", RED_FLAGGED)
    def test_no_card_for_a_red_flag_record_when_the_problem_is_not_about_the_knee(
        self, model: Model, today: date, problem_added_request: HookRequest, profile: str
    ) -> None:
        evaluation = problem_added_request(profile, hypertension).run(model, today)
        assert evaluation.cards == []
        assert evaluation.assessment.red_flagged


# -- appointment-book ------------------------------------------------------------------------------

KNEE_APPOINTMENTS: dict[str, ResourceFactory] = {
    "arthroscopy-cpt-proposed": knee_arthroscopy,
    "arthroscopy-cpt-pending": appointment(CPT, "29881", "Knee arthroscopy", status="pending"),
    "arthroscopy-cpt-booked": appointment(CPT, "29881", "Knee arthroscopy", status="booked"),
    "arthroscopy-cpt-waitlist": appointment(CPT, "29881", "Knee arthroscopy", status="waitlist"),
    "arthroplasty-cpt-appointment-type": appointment(CPT, "27447", "Arthroplasty, knee", coded_in="appointmentType"),
    "tkr-snomed-reason": appointment(SNOMED, "609588000", "Total knee replacement", coded_in="reasonCode"),
}
OTHER_APPOINTMENTS: dict[str, ResourceFactory] = {
    "shoulder-arthroscopy": appointment(CPT, "29827", "Arthroscopy, shoulder, surgical; with rotator cuff repair"),
    "follow-up": appointment(SNOMED, "390906007", "Follow-up encounter"),
    "office-visit": appointment(CPT, "99213", "Office or other outpatient visit, established patient"),
    "no-code": lambda f: appointment(CPT, "29881", "Knee arthroscopy")(f) | {"serviceType": [{"text": "Knee arthroscopy"}]},
}
CLOSED_STATUSES = ("cancelled", "noshow", "fulfilled", "arrived", "checked-in", "entered-in-error")


class TestAppointmentBook:
    @pytest.mark.parametrize("name", KNEE_APPOINTMENTS)
    def test_card_for_a_knee_procedure_booked(
        self, model: Model, today: date, appointment_book_request: HookRequest, name: str
    ) -> None:
        call = appointment_book_request(appointments=(KNEE_APPOINTMENTS[name],))
        evaluation = call.run(model, today)
        (booked,) = call.context["appointments"]["entry"]
        assert [o.reference for o in evaluation.knee_orders] == [f"Appointment/{booked['resource']['id']}"]
        (card,) = evaluation.cards
        assert card["summary"].startswith("Knee procedure booked;")
        assert card["indicator"] == "warning"
        assert card["source"]["topic"] == TOPIC
        assert card["detail"].startswith("**Knee procedure being booked:** ")

    def test_the_card_names_the_procedure(self, model: Model, today: date, appointment_book_request: HookRequest) -> None:
        (card,) = appointment_book_request().run(model, today).cards
        assert card["detail"].startswith("**Knee procedure being booked:** Arthroscopy, knee, surgical; with meniscectomy.")
        assert card["summary"] == (
            "Knee procedure booked; right knee pain with radiculopathy, lumbar region and thigh pain: "
            "consider the lumbar spine first"
        )

    def test_only_the_knee_appointments_are_named(self, model: Model, today: date, appointment_book_request: HookRequest) -> None:
        call = appointment_book_request(appointments=(OTHER_APPOINTMENTS["follow-up"], knee_arthroscopy))
        evaluation = call.run(model, today)
        _, knee = call.context["appointments"]["entry"]
        assert [o.reference for o in evaluation.knee_orders] == [f"Appointment/{knee['resource']['id']}"]
        (card,) = evaluation.cards
        assert "Follow-up encounter" not in card["detail"]

    @pytest.mark.parametrize("user", [PRACTITIONER, "PractitionerRole/role-1"])
    def test_a_clinician_user_gets_the_card(
        self, model: Model, today: date, appointment_book_request: HookRequest, user: str
    ) -> None:
        assert len(appointment_book_request(user=user).run(model, today).cards) == 1

    @pytest.mark.parametrize("user", ["Patient/self", "RelatedPerson/parent-1"])
    def test_no_card_when_the_user_may_be_the_patient(
        self, model: Model, today: date, appointment_book_request: HookRequest, user: str
    ) -> None:
        """The card is for clinicians: a patient or relative booking through the EHR's app gets none."""
        evaluation = appointment_book_request(user=user).run(model, today)
        assert evaluation.cards == []
        assert evaluation.assessment.band == "likely"

    @pytest.mark.parametrize("name", OTHER_APPOINTMENTS)
    def test_no_card_for_an_appointment_that_is_not_a_knee_procedure(
        self, model: Model, today: date, appointment_book_request: HookRequest, name: str
    ) -> None:
        evaluation = appointment_book_request(appointments=(OTHER_APPOINTMENTS[name],)).run(model, today)
        assert evaluation.knee_orders == ()
        assert evaluation.cards == []
        assert evaluation.assessment.band == "likely"  # the record would warrant a card; the booking does not

    @pytest.mark.parametrize("status", CLOSED_STATUSES)
    def test_no_card_for_an_appointment_no_longer_being_booked(
        self, model: Model, today: date, appointment_book_request: HookRequest, status: str
    ) -> None:
        closed = appointment(CPT, "29881", "Arthroscopy, knee, surgical; with meniscectomy", status=status)
        evaluation = appointment_book_request(appointments=(closed,)).run(model, today)
        assert evaluation.knee_orders == ()
        assert evaluation.cards == []

    def test_no_card_when_nothing_is_booked(self, model: Model, today: date, appointment_book_request: HookRequest) -> None:
        assert appointment_book_request(appointments=()).run(model, today).cards == []

    @pytest.mark.parametrize("profile", ["knee-oa-only", "acl-tear-only", "already-referred", "child"])
    def test_no_card_for_a_record_that_is_not_actionable(
        self, model: Model, today: date, appointment_book_request: HookRequest, profile: str
    ) -> None:
        evaluation = appointment_book_request(profile).run(model, today)
        assert len(evaluation.knee_orders) == 1
        assert evaluation.cards == []

    @pytest.mark.parametrize("profile", ["double-coded-episode", "elderly-stenosis"])
    def test_a_possible_record_gets_an_info_card_without_a_referral(
        self, model: Model, today: date, appointment_book_request: HookRequest, profile: str
    ) -> None:
        (card,) = appointment_book_request(profile).run(model, today).cards
        assert card["indicator"] == "info"
        assert card["summary"].startswith("Knee procedure booked;")
        assert "suggestions" not in card

    @pytest.mark.parametrize("profile", RED_FLAGGED)
    def test_red_flag_card_when_a_knee_procedure_is_booked(
        self, model: Model, today: date, appointment_book_request: HookRequest, profile: str
    ) -> None:
        assert_red_flag_card(appointment_book_request(profile).run(model, today))

    def test_no_red_flag_card_for_a_patient_user(self, model: Model, today: date, appointment_book_request: HookRequest) -> None:
        evaluation = appointment_book_request("cauda-equina", user="Patient/self").run(model, today)
        assert evaluation.cards == []
        assert evaluation.assessment.red_flagged
