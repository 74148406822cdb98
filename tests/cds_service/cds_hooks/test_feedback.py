"""The feedback endpoint over real HTTP: stored, idempotent, validated against the cards issued, and snoozing.

Feedback is a MAY for services (spec section "Feedback"); the Client-side rules it checks are the
request shape (card uuid, outcome, acceptedSuggestions, overrideReason, outcomeTimestamp).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest

from cds_service.cds_hooks.pipeline import snooze_rule
from cds_service.settings import load_settings
from hooks.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM
from hooks.synthetic import generate
from tests.cds_service.requests import TODAY, accepted, order_sign, overridden, patient_view_of
from tests.support import LogReader, RunningService, assert_cards_response, error_of

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
FEEDBACK = PATIENT_VIEW + "/feedback"


@pytest.fixture
def service(module_service: RunningService) -> RunningService:
    """Each test uses its own patients and cards, so one service (one log) serves the module."""
    return module_service


@pytest.fixture
def log(module_service: RunningService) -> Iterator[LogReader]:
    reader = LogReader.of(module_service)
    yield reader
    reader.close()


@pytest.fixture
def running(service_factory: Callable[..., RunningService], database_url: str) -> RunningService:
    """A service of its own on each database: snoozing is decided inside the decision log's append."""
    return service_factory(database_url=database_url)


def new_patient() -> list[dict[str, Any]]:
    return generate("radiculopathy-knee-pain", seed=uuid.uuid4().int % 10**9, today=TODAY)


def card_for(service: RunningService, resources: list[dict[str, Any]]) -> dict[str, Any]:
    cards = assert_cards_response(service.post(PATIENT_VIEW, patient_view_of(resources)))
    assert len(cards) == 1
    return cards[0]


def send(service: RunningService, *items: dict[str, Any], path: str = FEEDBACK) -> httpx.Response:
    return service.post(path, {"feedback": list(items)})


def test_accepted_with_the_card_suggestion_is_stored(service: RunningService, log: LogReader) -> None:
    resources = new_patient()
    card = card_for(service, resources)
    suggestion = card["suggestions"][0]["uuid"]

    response = send(service, accepted(card))

    assert response.status_code == 200
    assert response.json() == {"stored": 1, "duplicates": 0}
    [row] = log.feedback(card_uuid=card["uuid"])
    decision = log.decision(id=row["decision_id"])
    assert decision["card_uuids"] == [card["uuid"]]
    assert row["service_id"] == "spine-knee-patient-view"
    assert row["outcome"] == "accepted"
    assert row["accepted_suggestions"] == [suggestion]
    assert row["outcome_timestamp"] == "2026-11-24T10:00:00Z"
    assert row["issuer"] == service.ehr.issuer
    assert row["patient_pseudonym"] == decision["patient_pseudonym"]
    assert row["override_code"] is None


def test_overridden_with_a_reason_and_comment_is_stored(service: RunningService, log: LogReader) -> None:
    card = card_for(service, new_patient())
    response = send(service, overridden(card, "knee-cause-confirmed", "MRI showed a meniscal tear"))
    assert response.status_code == 200
    assert response.json() == {"stored": 1, "duplicates": 0}
    [row] = log.feedback(card_uuid=card["uuid"])
    assert (row["outcome"], row["override_code"], row["override_system"]) == (
        "overridden",
        "knee-cause-confirmed",
        OVERRIDE_SYSTEM,
    )
    assert row["override_comment"] == "MRI showed a meniscal tear"
    assert row["accepted_suggestions"] == []


def test_overridden_without_a_reason_is_stored(service: RunningService, log: LogReader) -> None:
    card = card_for(service, new_patient())
    assert send(service, overridden(card)).json() == {"stored": 1, "duplicates": 0}
    [row] = log.feedback(card_uuid=card["uuid"])
    assert row["override_code"] is None and row["override_comment"] is None


def test_a_batch_is_stored_and_sending_it_again_is_idempotent(service: RunningService, log: LogReader) -> None:
    first, second = card_for(service, new_patient()), card_for(service, new_patient())
    batch = [accepted(first), overridden(second, "not-clinically-relevant", "seen last week")]

    assert send(service, *batch).json() == {"stored": 2, "duplicates": 0}
    assert send(service, *batch).json() == {"stored": 0, "duplicates": 2}

    assert len(log.feedback(card_uuid=first["uuid"])) == 1
    assert len(log.feedback(card_uuid=second["uuid"])) == 1


def test_an_unknown_card_is_refused_and_the_valid_items_are_stored(service: RunningService, log: LogReader) -> None:
    card = card_for(service, new_patient())
    unknown = {**overridden(card), "card": str(uuid.uuid4())}

    response = send(service, accepted(card), unknown)

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "unknown_card"
    assert error["details"]["stored"] == 1
    assert error["details"]["rejected"] == [
        {"index": 1, "code": "unknown_card", "message": error["details"]["rejected"][0]["message"]}
    ]
    assert len(log.feedback(card_uuid=card["uuid"])) == 1
    assert log.feedback(card_uuid=unknown["card"]) == []


def test_a_card_of_another_service_is_unknown_here(service: RunningService) -> None:
    cards = assert_cards_response(service.post("/cds-services/spine-knee-order-sign", order_sign()))
    response = send(service, overridden(cards[0]))
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_card"


def test_accepted_without_accepted_suggestions_is_400(service: RunningService, log: LogReader) -> None:
    card = card_for(service, new_patient())
    for item in (
        {**accepted(card), "acceptedSuggestions": []},
        {k: v for k, v in accepted(card).items() if k != "acceptedSuggestions"},
    ):
        response = send(service, item)
        assert response.status_code == 400
        assert error_of(response)["code"] == "invalid_request"
    assert log.feedback(card_uuid=card["uuid"]) == []


def test_an_accepted_suggestion_the_card_did_not_carry_is_400(service: RunningService, log: LogReader) -> None:
    card = card_for(service, new_patient())
    other = card_for(service, new_patient())
    for foreign in (str(uuid.uuid4()), other["suggestions"][0]["uuid"]):
        response = send(service, {**accepted(card), "acceptedSuggestions": [{"id": foreign}]})
        assert response.status_code == 400
        assert error_of(response)["code"] == "unknown_suggestion"
    assert log.feedback(card_uuid=card["uuid"]) == []


@pytest.mark.parametrize(
    "change",
    [
        {"outcome": "ignored"},
        {"outcome": None},
        {"outcome": "ACCEPTED"},
        {"outcomeTimestamp": "yesterday"},
        {"outcomeTimestamp": None},
        {"card": None},
        {"card": 12},
    ],
)
def test_a_malformed_item_is_400(service: RunningService, change: dict[str, Any]) -> None:
    card = card_for(service, new_patient())
    item = {k: v for k, v in {**overridden(card), **change}.items() if v is not None}
    response = send(service, item)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize("body", [{}, {"feedback": []}, {"feedback": "x"}, [], {"feedback": [1]}])
def test_a_malformed_batch_is_400(service: RunningService, body: Any) -> None:
    response = service.post(FEEDBACK, body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


def test_feedback_for_an_unknown_service_is_404(service: RunningService) -> None:
    response = service.post("/cds-services/no-such-service/feedback", {"feedback": []})
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_service"


def test_feedback_as_text_plain_is_415(service: RunningService) -> None:
    response = service.client.post(FEEDBACK, content=b"{}", headers={**service.headers(FEEDBACK), "Content-Type": "text/plain"})
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


# -- snoozing: feedback on a card silences the service's cards for that patient a while ----------

REASONS = [reason["code"] for reason in OVERRIDE_REASONS]


def feedback_of(card: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """`accepted` takes the card's suggestion; anything else overrides it with that reason (None: no reason)."""
    return accepted(card) if kind == "accepted" else overridden(card, kind)


@contextmanager
def sent_days_ago(running: RunningService, days: int) -> Iterator[None]:
    """Whatever the service logs meanwhile (feedback included) is dated `days` days back by the log's clock."""
    decision_log = running.app.extensions["spine_cds"].decision_log
    clock = decision_log.clock
    decision_log.clock = lambda: clock() - timedelta(days=days)
    try:
        yield
    finally:
        decision_log.clock = clock


def snoozed(running: RunningService, log: LogReader, patient: list[dict[str, Any]]) -> bool:
    """Call the patient-view service for this patient again: True when the call was logged as snoozed."""
    again = patient_view_of(patient)
    cards = assert_cards_response(running.post(PATIENT_VIEW, again))
    outcome = log.decision(hook_instance=again["hookInstance"])["outcome"]
    assert (outcome, bool(cards)) in (("snoozed", False), ("cards", True)), (outcome, cards)
    return outcome == "snoozed"


def test_the_snooze_rule_from_the_default_settings() -> None:
    rule = snooze_rule(load_settings(environ={}))
    assert rule.system == OVERRIDE_SYSTEM
    assert dict(rule.reasons) == {
        "already-evaluated": 90,
        "knee-cause-confirmed": 365,
        "patient-declines": 90,
        "not-clinically-relevant": 90,
    }
    assert (rule.other_days, rule.accepted_days) == (90, 180)


@pytest.mark.parametrize("kind", [*REASONS, None, "accepted"])
def test_every_override_and_accepting_silence_the_service_for_that_patient(
    running: RunningService, read_log: Callable[[RunningService], LogReader], kind: str | None
) -> None:
    log = read_log(running)
    patient, other = new_patient(), new_patient()
    card = card_for(running, patient)
    assert send(running, feedback_of(card, kind)).status_code == 200

    again = patient_view_of(patient)
    assert running.post(PATIENT_VIEW, again).json() == {"cards": []}
    row = log.decision(hook_instance=again["hookInstance"])
    assert (row["outcome"], row["status_code"], row["card_uuids"], row["cards"]) == ("snoozed", 200, [], [])
    assert row["band"] == "likely"  # still assessed, only not shown
    assert log.scalars(f"SELECT count(*) FROM issued_cards WHERE decision_id = {row['id']}") == [0]
    # a retry of the snoozed call answers what was logged
    assert running.post(PATIENT_VIEW, again).json() == {"cards": []}

    assert len(card_for(running, other)) > 0  # another patient still gets cards
    # the order services are not silenced by feedback on the patient-view service
    body = order_sign()
    assert len(assert_cards_response(running.post("/cds-services/spine-knee-order-sign", body))) == 1


def test_a_confirmed_knee_cause_snoozes_past_snooze_days_and_another_reason_as_old_does_not(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    log = read_log(running)
    knee, declines = new_patient(), new_patient()
    knee_card, declines_card = card_for(running, knee), card_for(running, declines)
    items = overridden(knee_card, "knee-cause-confirmed"), overridden(declines_card, "patient-declines")
    with sent_days_ago(running, 200):  # older than snooze_days (90), within knee-cause-confirmed's 365
        assert send(running, *items).json() == {"stored": 2, "duplicates": 0}
    assert snoozed(running, log, knee)
    assert not snoozed(running, log, declines)


@pytest.mark.parametrize(
    ("kind", "days_ago", "silenced"),
    [
        ("already-evaluated", 89, True),
        ("not-clinically-relevant", 91, False),
        (None, 89, True),
        (None, 91, False),
        ("knee-cause-confirmed", 364, True),
        ("knee-cause-confirmed", 366, False),
        ("accepted", 179, True),
        ("accepted", 181, False),
    ],
)
def test_each_snooze_lasts_its_own_duration(
    running: RunningService,
    read_log: Callable[[RunningService], LogReader],
    kind: str | None,
    days_ago: int,
    silenced: bool,
) -> None:
    log = read_log(running)
    patient = new_patient()
    card = card_for(running, patient)
    with sent_days_ago(running, days_ago):
        assert send(running, feedback_of(card, kind)).status_code == 200
    assert snoozed(running, log, patient) is silenced


def test_a_snooze_ends_by_the_pipelines_own_clock(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    """The pipeline decides a snooze at the time its clock gives: 89 days on the override still silences, 91 do not."""
    log = read_log(running)
    patient = new_patient()
    assert send(running, overridden(card_for(running, patient), "already-evaluated")).status_code == 200
    hooks = running.app.extensions["spine_cds"].hooks
    clock = hooks.clock
    try:
        hooks.clock = lambda: clock() + timedelta(days=89)
        assert snoozed(running, log, patient)
        hooks.clock = lambda: clock() + timedelta(days=91)
        assert not snoozed(running, log, patient)
    finally:
        hooks.clock = clock


def test_a_reason_from_another_code_system_snoozes_for_snooze_days(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    """Only the cards' own reason system takes a reason's duration: another system's
    `knee-cause-confirmed` is an override like any other."""
    log = read_log(running)
    recent, older = new_patient(), new_patient()

    def foreign(card: dict[str, Any]) -> dict[str, Any]:
        coding = {"system": "urn:example:other-reasons", "code": "knee-cause-confirmed"}
        return {**overridden(card), "overrideReason": {"reason": coding}}

    assert send(running, foreign(card_for(running, recent))).status_code == 200
    with sent_days_ago(running, 200):
        assert send(running, foreign(card_for(running, older))).status_code == 200
    assert snoozed(running, log, recent)
    assert not snoozed(running, log, older)


def test_a_zero_duration_means_that_feedback_does_not_snooze(
    service_factory: Callable[..., RunningService], read_log: Callable[[RunningService], LogReader], database_url: str
) -> None:
    running = service_factory(database_url=database_url, snooze_days_by_reason={"patient-declines": 0, "accepted": 0})
    log = read_log(running)
    declined, accepting, evaluated, knee = (new_patient() for _ in range(4))
    assert send(running, overridden(card_for(running, declined), "patient-declines")).status_code == 200
    assert send(running, accepted(card_for(running, accepting))).status_code == 200
    assert send(running, overridden(card_for(running, evaluated), "already-evaluated")).status_code == 200
    assert send(running, overridden(card_for(running, knee), "knee-cause-confirmed")).status_code == 200
    assert not snoozed(running, log, declined)
    assert not snoozed(running, log, accepting)
    assert snoozed(running, log, evaluated)  # the others keep their durations
    assert snoozed(running, log, knee)


def test_snooze_days_zero_leaves_only_the_durations_of_their_own(
    service_factory: Callable[..., RunningService], read_log: Callable[[RunningService], LogReader], database_url: str
) -> None:
    running = service_factory(database_url=database_url, snooze_days=0)
    log = read_log(running)
    evaluated, unexplained, knee, accepting = (new_patient() for _ in range(4))
    assert send(running, overridden(card_for(running, evaluated), "already-evaluated")).status_code == 200
    assert send(running, overridden(card_for(running, unexplained))).status_code == 200
    assert send(running, overridden(card_for(running, knee), "knee-cause-confirmed")).status_code == 200
    assert send(running, accepted(card_for(running, accepting))).status_code == 200
    assert not snoozed(running, log, evaluated)
    assert not snoozed(running, log, unexplained)
    assert snoozed(running, log, knee)  # 365 days of its own
    assert snoozed(running, log, accepting)  # 180 days of its own


def test_every_duration_zero_disables_snoozing(
    service_factory: Callable[..., RunningService], read_log: Callable[[RunningService], LogReader], database_url: str
) -> None:
    running = service_factory(
        database_url=database_url,
        snooze_days=0,
        snooze_days_by_reason={"knee-cause-confirmed": 0, "accepted": 0},
    )
    log = read_log(running)
    patient = new_patient()
    first = card_for(running, patient)
    assert send(running, overridden(first, "knee-cause-confirmed")).json() == {"stored": 1, "duplicates": 0}
    second = card_for(running, patient)
    assert send(running, overridden(second, "already-evaluated"), accepted(second)).json() == {"stored": 2, "duplicates": 0}
    assert not snoozed(running, log, patient)
