"""The typed, bounded edge over real HTTP, on SQLite and PostgreSQL: hostile input is a 400 that names the
field, never a 500, and every such call still has its decision row."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hooks.synthetic import LOINC
from tests.cds_service.requests import overridden, patient_view
from tests.support import LogReader, RunningService, assert_cards_response, error_of, post_raw

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
_seeds = itertools.count(7000)


def fresh_patient() -> dict[str, Any]:
    """A patient no other test has called about: feedback snoozes a patient in the shared PostgreSQL log."""
    return patient_view(seed=next(_seeds))


FEEDBACK = "/cds-services/spine-knee-patient-view/feedback"


@pytest.fixture
def running(service_factory: Callable[..., RunningService], database_url: str) -> Iterator[RunningService]:
    yield service_factory(database_url=database_url, max_feedback_items=50)


def refused(running: RunningService, body: Any, field: str | None, log: LogReader) -> dict[str, Any]:
    """The call answers 400 naming `field`, and the decision log holds its row."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = log.count("decisions")
    response = post_raw(running, PATIENT_VIEW, content)
    assert response.status_code == 400, response.text
    error = error_of(response)
    if field is not None:
        assert error["details"]["field"] == field
    assert log.count("decisions") == before + 1
    return error


def with_context(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return body | {"context": body["context"] | changes}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param(lambda b: b | {"hookInstance": "h" * 300}, "hookInstance", id="hook-instance-beyond-its-column"),
        pytest.param(lambda b: with_context(b, patientId="abc\r\nX-Injected: 1"), "context.patientId", id="crlf-patient"),
        pytest.param(lambda b: with_context(b, patientId="a/../Observation"), "context.patientId", id="path-in-patient"),
        pytest.param(lambda b: with_context(b, patientId="p" * 65), "context.patientId", id="patient-beyond-fhir-id"),
        pytest.param(lambda b: with_context(b, userId="u" * 501), "context.userId", id="user-beyond-its-column"),
        pytest.param(lambda b: b | {"fhirServer": "https://ehr.example\r\n.org/fhir"}, "fhirServer", id="crlf-server"),
        pytest.param(lambda b: b | {"fhirServer": "http://[::1/fhir"}, "fhirServer", id="unparseable-host"),
        pytest.param(lambda b: b | {"fhirServer": "https://ehr.example.org:99999/fhir"}, "fhirServer", id="port-out-of-range"),
        pytest.param(lambda b: b | {"fhirServer": "https:///fhir"}, "fhirServer", id="no-host"),
    ],
)
def test_out_of_bounds_fields_are_a_400_naming_the_field(
    running: RunningService, read_log: Callable[[RunningService], LogReader], change: Any, field: str
) -> None:
    body = change(patient_view())
    error = refused(running, body, field, read_log(running))
    assert error["code"] == "invalid_request"


@pytest.mark.parametrize("escape", ["\\u0000", "\\u001f", "\\b", "\\u000b"])
def test_a_control_character_anywhere_is_a_400(
    running: RunningService, read_log: Callable[[RunningService], LogReader], escape: str
) -> None:
    """FHIR strings allow no character below 32 but tab, CR and LF; PostgreSQL cannot store NUL."""
    body = patient_view()
    condition = body["prefetch"]["conditions"]["entry"][1]["resource"]
    condition["code"]["coding"][0]["display"] = "PLACEHOLDER"
    content = json.dumps(body).encode().replace(b"PLACEHOLDER", b"Radiculopathy" + escape.encode())
    error = refused(running, content, None, read_log(running))
    assert "control character" in error["message"]


def test_tab_cr_lf_and_an_escaped_backslash_are_allowed(running: RunningService) -> None:
    body = patient_view()
    condition = body["prefetch"]["conditions"]["entry"][1]["resource"]
    condition["code"]["text"] = "line one\r\n\tline two, a path C:\\u0000 that is text"
    assert assert_cards_response(running.post(PATIENT_VIEW, body))


def test_json_nested_past_what_the_log_can_write_is_a_400(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    body = patient_view()
    body["extension"] = {"deep": json.loads("[" * 300 + "]" * 300)}
    error = refused(running, body, None, read_log(running))
    assert "nested deeper" in error["message"]


def test_integers_beyond_64_bits_are_answered(running: RunningService) -> None:
    body = patient_view()
    observation = {
        "resourceType": "Observation",
        "id": "huge",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{body['context']['patientId']}"},
        "valueInteger": 2**80,
    }
    body["prefetch"]["observations"]["entry"].append({"resource": observation})
    response = running.post(PATIENT_VIEW, body)
    assert response.status_code == 200


def test_an_unexpected_failure_is_logged_before_the_500_leaves(
    running: RunningService, read_log: Callable[[RunningService], LogReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the assessment broke")

    monkeypatch.setattr("cds_service.cds_hooks.pipeline.evaluate", broken)
    body = patient_view()
    response = running.post(PATIENT_VIEW, body)
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    assert "assessment broke" not in response.text
    row = read_log(running).decision(hook_instance=body["hookInstance"])
    assert (row["outcome"], row["status_code"], row["cards"]) == ("internal_error", 500, [])


# -- feedback ---------------------------------------------------------------------------------------


def test_feedback_past_the_item_cap_is_a_413(running: RunningService) -> None:
    (card,) = assert_cards_response(running.post(PATIENT_VIEW, fresh_patient()))
    items = [overridden(card, "patient-declines", timestamp=f"2026-11-24T10:{i // 60:02d}:{i % 60:02d}Z") for i in range(51)]
    response = running.post(FEEDBACK, {"feedback": items})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_many_items"
    # at the cap, every item is stored in one call
    response = running.post(FEEDBACK, {"feedback": items[:50]})
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 50, "duplicates": 0}
    again = running.post(FEEDBACK, {"feedback": items[:50]})
    assert again.json() == {"stored": 0, "duplicates": 50}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param(lambda i: i | {"card": "c" * 101}, "feedback[1].card", id="card-beyond-its-column"),
        pytest.param(
            lambda i: i | {"outcomeTimestamp": "2026-11-24T10:00:00" + "Z" * 40}, "feedback[1].outcomeTimestamp", id="long"
        ),
        pytest.param(lambda i: i | {"outcome": "ignored"}, "feedback[1].outcome", id="unknown-outcome"),
    ],
)
def test_a_bad_feedback_item_is_rejected_by_index_and_field(running: RunningService, change: Any, field: str) -> None:
    (card,) = assert_cards_response(running.post(PATIENT_VIEW, fresh_patient()))
    good = overridden(card, "patient-declines")
    response = running.post(FEEDBACK, {"feedback": [good, change(good)]})
    assert response.status_code == 400
    details = error_of(response)["details"]
    assert details["stored"] == 1
    (rejected,) = details["rejected"]
    assert rejected["index"] == 1 and field in rejected["message"]


def test_a_control_character_in_feedback_is_a_400_and_nothing_is_stored(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    (card,) = assert_cards_response(running.post(PATIENT_VIEW, fresh_patient()))
    content = json.dumps({"feedback": [overridden(card, "patient-declines", comment="PLACEHOLDER")]}).encode()
    response = post_raw(running, FEEDBACK, content.replace(b"PLACEHOLDER", rb"a\\u0000b\u0000"))
    assert response.status_code == 400 and "control character" in error_of(response)["message"]
    assert read_log(running).feedback(card_uuid=card["uuid"]) == []


def test_a_long_override_code_is_kept_as_no_code(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    (card,) = assert_cards_response(running.post(PATIENT_VIEW, fresh_patient()))
    item = overridden(card) | {"overrideReason": {"reason": {"system": "urn:local", "code": "x" * 300}}}
    assert running.post(FEEDBACK, {"feedback": [item]}).status_code == 200
    (row,) = read_log(running).feedback(card_uuid=card["uuid"])
    assert row["override_code"] is None
