"""Discovery and hook calls over real HTTP: the cards each hook gives, and every way a call is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from hooks.synthetic import SNOMED, Factory, generate, prefetch_for, searchset
from tests.cds_service.requests import TODAY, order_select, order_sign, patient_view
from tests.support import RunningService, assert_cards_response, card_problems, error_of, post_raw

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
ORDER_SELECT = "/cds-services/spine-knee-order-select"
ORDER_SIGN = "/cds-services/spine-knee-order-sign"
SERVICE_IDS = {
    "spine-knee-patient-view": "patient-view",
    "spine-knee-order-select": "order-select",
    "spine-knee-order-sign": "order-sign",
}
PATHS = {"patient-view": PATIENT_VIEW, "order-select": ORDER_SELECT, "order-sign": ORDER_SIGN}
BODIES: dict[str, Callable[[], dict[str, Any]]] = {
    "patient-view": patient_view,
    "order-select": order_select,
    "order-sign": order_sign,
}


@pytest.fixture
def service(module_service: RunningService) -> RunningService:
    """Calls here leave nothing behind that another call could see, so one service serves the module."""
    return module_service


# -- discovery --------------------------------------------------------------------------------------


def test_discovery_lists_the_three_services(service: RunningService) -> None:
    """req 4, req 5, req 6, req 7, req 9, req 10, req 13: GET {base}/cds-services answers 200 with an object
    holding a `services` array; every service has a string hook, id and description (and a title, req 8)."""
    response = service.get("/cds-services")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body["services"], list)
    services = {s["id"]: s for s in body["services"]}
    assert {k: s["hook"] for k, s in services.items()} == SERVICE_IDS
    for entry in services.values():
        for name in ("hook", "id", "title", "description"):
            assert isinstance(entry[name], str) and entry[name], (entry["id"], name)
        assert isinstance(entry.get("usageRequirements", ""), str)


def test_discovery_declares_prefetch_templates_with_context_tokens(service: RunningService) -> None:
    """req 29, req 36, req 55, req 56, req 57, req 59: each service registers its prefetch templates in
    discovery, keyed, with tokens delimited by {{ }} naming only `context.<root primitive field>`."""
    services = service.get("/cds-services").json()["services"]
    expected_keys = {"patient", "conditions", "observations", "examObservations", "procedures", "serviceRequests"}
    for entry in services:
        prefetch = entry["prefetch"]
        assert set(prefetch) == expected_keys
        for template in prefetch.values():
            assert template.count("{{") == template.count("}}") == 1
            token = template.split("{{", 1)[1].split("}}", 1)[0].strip()
            assert token == "context.patientId"


def test_discovery_answers_with_no_null_or_empty_members(service: RunningService) -> None:
    """req 3: no JSON element of the discovery response is null or empty."""
    body = service.get("/cds-services").json()

    def empties(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [k for k, v in value.items() if v in (None, "", [], {})] + [e for v in value.values() for e in empties(v)]
        if isinstance(value, list):
            return [e for v in value for e in empties(v)]
        return []

    assert empties(body) == []


# -- the cards each hook gives -----------------------------------------------------------------------


def test_patient_view_gives_a_warning_card_for_likely_spinal_origin(service: RunningService) -> None:
    """req 16, req 74: POST {base}/cds-services/{id} answers 200 with an object holding a cards array."""
    cards = assert_cards_response(service.post(PATIENT_VIEW, patient_view()))
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] == "warning"
    assert card["summary"] == "Right knee pain with radiculopathy, lumbar region and thigh pain: consider a lumbar spine source"
    assert "**Likely**: a rule, not a validated predictor." in card["detail"]
    assert card["suggestions"][0]["actions"][0]["resource"]["code"]["text"] == "Lumbar spine evaluation"


def test_patient_view_gives_an_info_card_for_possible_spinal_origin(service: RunningService) -> None:
    """req 87, req 88: the indicator is one of the allowed values (info for a `possible` band)."""
    cards = assert_cards_response(service.post(PATIENT_VIEW, patient_view("double-coded-episode")))
    assert [c["indicator"] for c in cards] == ["info"]
    assert "suggestions" not in cards[0]  # a possible card advises examining first; the referral is for likely
    assert "Consider examining first" in cards[0]["detail"]


@pytest.mark.parametrize("profile", ["knee-oa-only", "acl-tear-only", "child", "already-referred"])
def test_no_card_is_an_empty_cards_array(service: RunningService, profile: str) -> None:
    """req 3, req 74: with no guidance the answer is 200 with `cards` an empty array (the one empty member allowed)."""
    response = service.post(PATIENT_VIEW, patient_view(profile))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_every_card_is_valid_cds_hooks(service: RunningService, hook: str) -> None:
    """req 3, req 80, req 83, req 85, req 87, req 88, req 90, req 92, req 93, req 95, req 96, req 98, req 100,
    req 103, req 105, req 107, req 115, req 117, req 119, req 121, req 124, req 127, req 128, req 130, req 131,
    req 136, req 138, req 139, req 141, req 142, req 147, req 216, req 217, req 218, req 219: the card, its
    source, suggestions, actions, override reasons and links have the required members with the right types."""
    cards = assert_cards_response(service.post(PATHS[hook], BODIES[hook]()))
    assert len(cards) == 1
    card = cards[0]
    assert card_problems(card) == []
    # the members this service always sends, checked explicitly as well as by card_problems
    assert card["selectionBehavior"] == "any"
    assert all(isinstance(r["display"], str) and r["display"] for r in card["overrideReasons"])
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "create"
    assert action["resource"]["resourceType"] == "ServiceRequest"
    assert action["resource"]["status"] == "draft"
    assert "id" not in action["resource"]


def test_order_sign_gives_a_card_for_a_drafted_knee_order(service: RunningService) -> None:
    """req 74: order-sign with a knee MRI drafted for a likely-spinal patient gives the order card."""
    cards = assert_cards_response(service.post(ORDER_SIGN, order_sign()))
    assert len(cards) == 1
    assert cards[0]["summary"].startswith("Knee order drafted")
    assert "**Knee-directed order drafted:** MRI of knee" in cards[0]["detail"]


def test_order_sign_without_a_knee_order_gives_no_card(service: RunningService) -> None:
    body = order_sign()
    factory = Factory(seed=9, today=TODAY, patient_id=body["context"]["patientId"])
    histology = factory.service_request(SNOMED, "252416005", "Histopathology test", status="draft", days_ago=0)
    body["context"]["draftOrders"] = searchset([histology])
    assert service.post(ORDER_SIGN, body).json() == {"cards": []}


def test_order_select_counts_only_the_selected_orders(service: RunningService) -> None:
    """order-select: a knee order among draftOrders that the user has not selected gives no card."""
    body = order_select()
    patient_id = body["context"]["patientId"]
    other = Factory(seed=11, today=TODAY, patient_id=patient_id).service_request(
        SNOMED, "252416005", "Histopathology test", status="draft", days_ago=0
    )
    knee = body["context"]["draftOrders"]["entry"][0]["resource"]
    body["context"]["draftOrders"] = searchset([knee, other])

    body["context"]["selections"] = [f"ServiceRequest/{other['id']}"]
    assert service.post(ORDER_SELECT, body).json() == {"cards": []}

    body["hookInstance"] = body["hookInstance"] + "-2"
    body["context"]["selections"] = [f"ServiceRequest/{knee['id']}"]
    cards = assert_cards_response(service.post(ORDER_SELECT, body))
    assert len(cards) == 1
    assert cards[0]["detail"].startswith("**Knee-directed order drafted:** MRI of knee.")
    assert "Histopathology" not in cards[0]["detail"]


def test_order_hooks_give_no_card_when_the_patient_is_unlikely(service: RunningService) -> None:
    assert service.post(ORDER_SIGN, order_sign("knee-oa-only")).json() == {"cards": []}
    assert service.post(ORDER_SELECT, order_select("knee-oa-only")).json() == {"cards": []}


def test_unknown_extensions_are_ignored(service: RunningService) -> None:
    """req 214: an `extension` object at the top level and in the context does not change the answer."""
    body = patient_view()
    body["extension"] = {"org.example.unknown": {"flag": True, "nested": {"n": 1}}}
    body["context"]["extension"] = {"com.vendor.context-extra": {"value": "x"}}
    body["unknownTopLevel"] = "ignored too"
    cards = assert_cards_response(service.post(PATIENT_VIEW, body))
    assert len(cards) == 1 and cards[0]["indicator"] == "warning"


def test_encounter_id_and_other_context_fields_are_accepted(service: RunningService) -> None:
    body = patient_view()
    body["context"]["encounterId"] = "enc-1"
    assert len(assert_cards_response(service.post(PATIENT_VIEW, body))) == 1


def test_prefetch_may_be_paged_as_a_list_of_bundles(service: RunningService) -> None:
    resources = generate("radiculopathy-knee-pain", seed=0, today=TODAY)
    body = patient_view()
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    body["prefetch"]["conditions"] = [searchset(conditions[:2]), searchset(conditions[2:])]
    assert len(assert_cards_response(service.post(PATIENT_VIEW, body))) == 1


# -- refusals: every error is JSON with a stable code ----------------------------------------------------


def _send(service: RunningService, path: str, body: Any) -> tuple[int, str]:
    response = service.post(path, body)
    return response.status_code, error_of(response)["code"]


def test_malformed_json_is_400(service: RunningService) -> None:
    response = post_raw(service, PATIENT_VIEW, b'{"hook": "patient-view", ')
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


@pytest.mark.parametrize("document", [[], ["patient-view"], "patient-view", 42, None])
def test_a_body_that_is_not_an_object_is_400(service: RunningService, document: Any) -> None:
    response = post_raw(service, PATIENT_VIEW, json.dumps(document).encode())
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize("hook", [None, "", 7])
def test_missing_or_non_string_hook_is_400(service: RunningService, hook: Any) -> None:
    body = patient_view()
    if hook is None:
        del body["hook"]
    else:
        body["hook"] = hook
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


def test_the_wrong_hook_for_the_service_is_400(service: RunningService) -> None:
    assert _send(service, PATIENT_VIEW, order_sign()) == (400, "wrong_hook")
    assert _send(service, ORDER_SIGN, patient_view()) == (400, "wrong_hook")
    assert _send(service, ORDER_SELECT, order_sign()) == (400, "wrong_hook")


@pytest.mark.parametrize("instance", [None, "", 12])
def test_missing_hook_instance_is_400(service: RunningService, instance: Any) -> None:
    body = patient_view()
    if instance is None:
        del body["hookInstance"]
    else:
        body["hookInstance"] = instance
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("hook", "field"),
    [
        ("patient-view", "userId"),
        ("patient-view", "patientId"),
        ("order-select", "selections"),
        ("order-select", "draftOrders"),
        ("order-select", "userId"),
        ("order-select", "patientId"),
        ("order-sign", "draftOrders"),
        ("order-sign", "userId"),
        ("order-sign", "patientId"),
    ],
)
def test_missing_required_context_field_is_400(service: RunningService, hook: str, field: str) -> None:
    body = BODIES[hook]()
    del body["context"][field]
    response = service.post(PATHS[hook], body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert field in error["message"]


@pytest.mark.parametrize(
    ("hook", "field", "value"),
    [
        ("patient-view", "patientId", None),
        ("patient-view", "patientId", 17),
        ("order-select", "selections", "ServiceRequest/1"),
        ("order-select", "selections", [1, 2]),
        ("order-sign", "draftOrders", {"resourceType": "ServiceRequest"}),
        ("order-sign", "draftOrders", []),
    ],
)
def test_context_fields_of_the_wrong_type_are_400(service: RunningService, hook: str, field: str, value: Any) -> None:
    body = BODIES[hook]()
    body["context"][field] = value
    assert _send(service, PATHS[hook], body) == (400, "invalid_request")


def test_missing_context_is_400(service: RunningService) -> None:
    body = patient_view()
    del body["context"]
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


def test_fhir_authorization_without_fhir_server_is_400(service: RunningService) -> None:
    body = patient_view()
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "x", "subject": "y"}
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


@pytest.mark.parametrize(
    "authorization",
    [
        "a string",
        {"token_type": "Bearer", "expires_in": 300, "scope": "x", "subject": "y"},
        {"access_token": "t", "token_type": "MAC", "expires_in": 300, "scope": "x", "subject": "y"},
    ],
)
def test_a_malformed_fhir_authorization_is_400(service: RunningService, authorization: Any) -> None:
    body = patient_view()
    body["fhirServer"] = "https://fhir.example.org/r4"
    body["fhirAuthorization"] = authorization
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


@pytest.mark.parametrize("fhir_server", ["fhir.example.org/r4", "ftp://fhir.example.org", 5])
def test_a_fhir_server_that_is_not_an_absolute_url_is_400(service: RunningService, fhir_server: Any) -> None:
    body = patient_view()
    body["fhirServer"] = fhir_server
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


def test_prefetch_that_is_not_an_object_is_400(service: RunningService) -> None:
    body = patient_view()
    body["prefetch"] = [prefetch_for(generate("radiculopathy-knee-pain", today=TODAY))]
    assert _send(service, PATIENT_VIEW, body) == (400, "invalid_request")


def test_an_unknown_service_is_404(service: RunningService) -> None:
    assert _send(service, "/cds-services/no-such-service", patient_view()) == (404, "unknown_service")


def test_an_unknown_path_is_a_json_404(service: RunningService) -> None:
    response = service.get("/no-such-path")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_a_text_plain_body_is_415(service: RunningService) -> None:
    response = post_raw(service, PATIENT_VIEW, json.dumps(patient_view()).encode(), "text/plain")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_a_fhir_json_body_is_accepted(service: RunningService) -> None:
    """Any +json media type is JSON (req 1)."""
    response = post_raw(service, PATIENT_VIEW, json.dumps(patient_view()).encode(), "application/fhir+json")
    assert len(assert_cards_response(response)) == 1


def test_a_body_over_max_body_bytes_is_413(service_factory: Callable[..., RunningService]) -> None:
    running = service_factory(max_body_bytes=2048)
    body = patient_view()
    assert len(json.dumps(body)) > 2048
    response = running.post(PATIENT_VIEW, body)
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"
    # a body under the limit is read as usual (and fails later for its own reason)
    small = patient_view(prefetch=False)
    assert len(json.dumps(small)) < 2048
    assert _send(running, PATIENT_VIEW, small) == (412, "prefetch_unavailable")


def test_get_on_a_service_endpoint_is_a_json_405(service: RunningService) -> None:
    response = service.get(PATIENT_VIEW)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


def test_a_card_summary_stays_short_for_every_profile(service: RunningService) -> None:
    """req 83: whatever the record, summaries stay under 140 characters."""
    for profile in ("radiculopathy-knee-pain", "double-coded-episode", "elderly-stenosis", "noisy-record"):
        for card in assert_cards_response(service.post(PATIENT_VIEW, patient_view(profile))):
            assert len(card["summary"]) < 140


@pytest.mark.parametrize("path", ["/cds-services/spine-knee-patient-view", "/cds-services/spine-knee-order-sign"])
def test_a_deceased_patient_gets_no_card(service: RunningService, path: str) -> None:
    body = patient_view("deceased") if path.endswith("patient-view") else order_sign("deceased")
    assert assert_cards_response(service.post(path, body)) == []
