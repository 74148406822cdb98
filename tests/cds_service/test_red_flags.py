"""Red flags over real HTTP: the warning card is what the EHR shows and what the log keeps."""

from __future__ import annotations

from collections.abc import Callable

from tests.cds_service.requests import order_sign, patient_view
from tests.support import LogReader, RunningService, assert_cards_response


def test_a_red_flag_patient_gets_the_warning_card_and_the_log_names_the_red_flag(
    service_factory: Callable[..., RunningService], database_url: str, read_log: Callable[[RunningService], LogReader]
) -> None:
    running = service_factory(database_url=database_url)
    body = patient_view("cauda-equina")
    [card] = assert_cards_response(running.post("/cds-services/spine-knee-patient-view", body))
    assert card["indicator"] == "warning" and "suggestions" not in card
    assert "Cauda equina syndrome" in card["summary"] and "does not triage red flags" in card["detail"]
    row = read_log(running).decision(hook_instance=body["hookInstance"])
    assert row["outcome"] == "cards" and row["card_uuids"] == [card["uuid"]] and row["suggestion_uuids"] == []
    assert [flag["code"].rpartition("|")[2] for flag in row["assessment"]["red_flags"]] == ["G83.4"]


def test_a_knee_order_for_a_septic_knee_gets_no_spine_suggestion(module_service: RunningService) -> None:
    [card] = assert_cards_response(module_service.post("/cds-services/spine-knee-order-sign", order_sign("septic-knee")))
    assert "suggestions" not in card and "spine" not in card["summary"].lower()
