"""Completing the prefetch from the EHR's FHIR server: what is fetched, with which token, and when it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hooks.synthetic import ICD10, SNOMED, Factory, generate, prefetch_for
from tests.cds_service.requests import FHIR_TOKEN, PREFETCH_TEMPLATES, TODAY, fetched_from, order_sign, patient_view_of
from tests.support import FhirServer, HttpPeer, LogReader, RunningService, assert_cards_response, error_of

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
SEARCHES = {"Condition", "Observation", "Procedure", "ServiceRequest"}

StartFhir = Callable[..., FhirServer]
# the service started with the issuer's fhir_servers listing the given bases (conftest.service_trusting)
StartService = Callable[..., RunningService]
ReadLog = Callable[[RunningService], LogReader]


@pytest.fixture
def service(module_service: RunningService) -> RunningService:
    """Every test here uses its own patient and hook instances, so one service serves the module."""
    return module_service


@pytest.fixture
def read(module_service: RunningService) -> Iterator[LogReader]:
    reader = LogReader.of(module_service)
    yield reader
    reader.close()


def radiculopathy(seed: int) -> list[dict[str, Any]]:
    return generate("radiculopathy-knee-pain", seed=seed, today=TODAY)


def fetched_paths(server: FhirServer) -> list[str]:
    return sorted(r.path for r in server.peer.requests)


def test_missing_prefetch_is_fetched_with_the_bearer_token(
    service_trusting: StartService, fhir_server_factory: StartFhir
) -> None:
    """req 61: the service presents the access token from fhirAuthorization on every FHIR call
    (and fetches each of its prefetch keys once)."""
    resources = radiculopathy(seed=101)
    patient_id = resources[0]["id"]
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    body = fetched_from(patient_view_of(resources), server.base)

    cards = assert_cards_response(service.post(PATIENT_VIEW, body))

    assert len(cards) == 1 and cards[0]["indicator"] == "warning"
    assert fetched_paths(server) == sorted(
        "/fhir/" + template.split("?")[0].replace("{{context.patientId}}", patient_id) for template in PREFETCH_TEMPLATES.values()
    )
    for request in server.peer.requests:
        assert request.headers["authorization"] == f"Bearer {FHIR_TOKEN}"
        if request.path != f"/fhir/Patient/{patient_id}":
            assert request.query["patient"] == [patient_id]
    # the card is the one the same record gives when the EHR sends the prefetch itself
    with_prefetch = service.post(PATIENT_VIEW, patient_view_of(resources)).json()["cards"][0]
    assert cards[0]["detail"] == with_prefetch["detail"]


def test_next_links_are_followed_and_every_page_is_read(
    service_trusting: StartService, fhir_server_factory: StartFhir, read_log: ReadLog
) -> None:
    """The service follows searchset `next` links on the same server; findings on the last page still count."""
    core = generate("radiculopathy-knee-pain", seed=102, today=TODAY)
    factory = Factory(seed=1102, today=TODAY, patient_id=core[0]["id"])
    unrelated = [
        factory.condition(ICD10, "I10", "Essential hypertension", onset_days_ago=1000 + i)
        if i % 2
        else factory.condition(SNOMED, "44054006", "Diabetes mellitus type 2", onset_days_ago=900 + i)
        for i in range(8)
    ]
    # the patient, then the unrelated conditions first so the findings sit on the last pages
    resources = [core[0], *unrelated, *core[1:]]
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    assert len(conditions) == 12
    server = fhir_server_factory(resources, page_size=2, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    read = read_log(service)
    body = fetched_from(patient_view_of(core), server.base)

    cards = assert_cards_response(service.post(PATIENT_VIEW, body))

    condition_requests = [r for r in server.peer.requests if r.path == "/fhir/Condition"]
    assert len(condition_requests) == 6
    assert sorted(r.query.get("_offset", ["0"])[0] for r in condition_requests) == ["0", "10", "2", "4", "6", "8"]
    assert all(r.headers["authorization"] == f"Bearer {FHIR_TOKEN}" for r in condition_requests)
    assert len(cards) == 1
    findings = [r for r in core[1:] if r["code"]["coding"][0]["code"] != "30989003"]  # all but the knee pain
    for condition in findings:
        assert f"{condition['code']['coding'][0]['code']})" in cards[0]["detail"]  # each finding's own code
    row = read.decision(hook_instance=body["hookInstance"])
    logged = {ref for finding in row["assessment"]["findings"] for ref in finding["references"]}
    assert logged == {f"Condition/{c['id']}" for c in findings}


def test_a_key_sent_as_null_is_not_fetched(service_trusting: StartService, fhir_server_factory: StartFhir) -> None:
    resources = radiculopathy(seed=103)
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    body = fetched_from(patient_view_of(resources), server.base)
    body["prefetch"] = {"procedures": None, "serviceRequests": None}

    assert len(assert_cards_response(service.post(PATIENT_VIEW, body))) == 1
    paths = fetched_paths(server)
    assert "/fhir/Procedure" not in paths and "/fhir/ServiceRequest" not in paths
    assert {"/fhir/Condition", "/fhir/Observation"} <= set(paths)


def test_a_key_sent_is_not_fetched_again(service_trusting: StartService, fhir_server_factory: StartFhir) -> None:
    resources = radiculopathy(seed=104)
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    full = prefetch_for(resources)
    body = fetched_from(patient_view_of(resources), server.base)
    body["prefetch"] = {"patient": full["patient"], "conditions": full["conditions"]}

    assert len(assert_cards_response(service.post(PATIENT_VIEW, body))) == 1
    assert fetched_paths(server) == ["/fhir/Observation", "/fhir/Observation", "/fhir/Procedure", "/fhir/ServiceRequest"]


def test_a_complete_prefetch_makes_no_fhir_call(service: RunningService, fhir_server_factory: StartFhir) -> None:
    resources = radiculopathy(seed=105)
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    body = fetched_from(patient_view_of(resources), server.base)
    body["prefetch"] = prefetch_for(resources)

    assert len(assert_cards_response(service.post(PATIENT_VIEW, body))) == 1
    assert server.peer.requests == []


def test_an_operation_outcome_or_empty_bundle_is_accepted_and_noted(service: RunningService, read: LogReader) -> None:
    """An OperationOutcome in place of a prefetch value is accepted and noted as a data-quality issue
    (the service checks prefetched data for OperationOutcomes, req 52 SHOULD)."""
    resources = radiculopathy(seed=106)
    body = patient_view_of(resources)
    body["prefetch"]["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": "search failed"}],
    }
    body["prefetch"]["procedures"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}

    cards = assert_cards_response(service.post(PATIENT_VIEW, body))

    assert len(cards) == 1
    notes = read.decision(hook_instance=body["hookInstance"])["assessment"]["notes"]
    assert any("OperationOutcome" in n and "'observations'" in n and "error/processing" in n for n in notes), notes
    assert not any("procedures" in n for n in notes)
    assert "search failed" not in str(notes)  # diagnostics text is not copied into the log
    assert "OperationOutcome" in cards[0]["detail"]  # shown to the clinician under data quality


def test_an_empty_record_gives_200_and_no_card(service: RunningService) -> None:
    resources = radiculopathy(seed=107)
    body = patient_view_of(resources, prefetch=False)
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    body["prefetch"] = {key: empty for key in PREFETCH_TEMPLATES} | {"patient": resources[0]}
    assert service.post(PATIENT_VIEW, body).json() == {"cards": []}


def test_missing_prefetch_without_a_fhir_server_is_412(service: RunningService) -> None:
    """req 54: the service cannot get the data (no prefetch, no fhirServer) and answers 412."""
    resources = radiculopathy(seed=108)
    response = service.post(PATIENT_VIEW, patient_view_of(resources, prefetch=False))
    assert response.status_code == 412
    error = error_of(response)
    assert error["code"] == "prefetch_unavailable"
    assert sorted(error["details"]["keys"]) == sorted(PREFETCH_TEMPLATES)


def test_one_missing_key_without_a_fhir_server_is_412(service: RunningService) -> None:
    """req 54"""
    body = patient_view_of(radiculopathy(seed=109))
    del body["prefetch"]["observations"]
    response = service.post(PATIENT_VIEW, body)
    assert response.status_code == 412
    assert error_of(response)["details"]["keys"] == ["observations"]


def test_a_fhir_server_error_is_412(service_trusting: StartService, fhir_server_factory: StartFhir) -> None:
    """req 54: the FHIR server fails (500 for Condition) and the prefetch was not sent: 412."""
    resources = radiculopathy(seed=110)
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    server.fail_types.add("Condition")
    response = service.post(PATIENT_VIEW, fetched_from(patient_view_of(resources), server.base))
    assert response.status_code == 412
    error = error_of(response)
    assert error["code"] == "prefetch_unavailable"
    assert error["details"]["keys"] == ["conditions"]


# no token at all is now refused before any FHIR call: test_fhir_server_policy.py, fhir_authorization_required
@pytest.mark.parametrize("token", ["a-wrong-token"])
def test_a_fhir_server_refusing_the_token_is_412(
    service_trusting: StartService, fhir_server_factory: StartFhir, token: str | None
) -> None:
    """req 54: without the right token the FHIR server answers 401, so the data cannot be had: 412."""
    resources = radiculopathy(seed=111)
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    response = service.post(PATIENT_VIEW, fetched_from(patient_view_of(resources), server.base, token=token))
    assert response.status_code == 412
    assert error_of(response)["code"] == "prefetch_unavailable"
    sent = {r.headers.get("authorization") for r in server.peer.requests}
    assert sent == ({None} if token is None else {f"Bearer {token}"})


def test_an_unreachable_fhir_server_is_412(service_trusting: StartService) -> None:
    """req 54"""
    resources = radiculopathy(seed=112)
    # a server that has been started and stopped leaves a port nobody listens on
    with HttpPeer(lambda *_: (200, {})).running() as gone:
        closed = gone.url + "/fhir"
    service = service_trusting(closed)
    response = service.post(PATIENT_VIEW, fetched_from(patient_view_of(resources), closed))
    assert response.status_code == 412
    assert error_of(response)["code"] == "prefetch_unavailable"


def test_a_non_fhir_answer_is_412(service_trusting: StartService) -> None:
    """req 54: a 200 that is not a FHIR resource does not count as the data."""
    resources = radiculopathy(seed=113)
    with HttpPeer(lambda *_: (200, {"hello": "world"})).running() as peer:
        service = service_trusting(peer.url + "/fhir")
        response = service.post(PATIENT_VIEW, fetched_from(patient_view_of(resources), peer.url + "/fhir"))
    assert response.status_code == 412
    assert error_of(response)["code"] == "prefetch_unavailable"


class RedirectingFhirServer(FhirServer):
    """A FHIR server whose Condition search names a `next` page on another origin."""

    def __init__(self, resources: list[dict[str, Any]], elsewhere: str, token: str) -> None:
        super().__init__(resources, token=token)
        self.elsewhere = elsewhere

    def _handle(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        status, body = super()._handle(path, query, headers)
        if status == 200 and path == "/fhir/Condition":
            body["link"] = [{"relation": "next", "url": f"{self.elsewhere}/fhir/Condition?patient=x&_offset=50"}]
        return status, body


def test_next_links_to_another_origin_are_not_followed(service_trusting: StartService, read_log: ReadLog) -> None:
    """req 61: the token is presented only to the EHR's FHIR server; a `next` link elsewhere is not followed."""
    resources = radiculopathy(seed=114)
    other = HttpPeer(lambda *_: (200, {"resourceType": "Bundle", "type": "searchset", "total": 0}))
    with other.running():
        server = RedirectingFhirServer(resources, other.url, FHIR_TOKEN)
        with server.peer.running():
            service = service_trusting(server.base)
            read = read_log(service)
            body = fetched_from(patient_view_of(resources), server.base)
            response = service.post(PATIENT_VIEW, body)
    assert len(assert_cards_response(response)) == 1
    assert other.requests == []
    assert [r.path for r in server.peer.requests].count("/fhir/Condition") == 1
    notes = read.decision(hook_instance=body["hookInstance"])["assessment"]["notes"]
    assert "A further page of 'conditions' on another server was not fetched." in notes


def test_the_page_cap_stops_paging_and_says_so(service_trusting: StartService, fhir_server_factory: StartFhir) -> None:
    """A search longer than `fetch_max_pages` pages is read in part, and the decision notes it."""
    core = radiculopathy(seed=115)
    server = fhir_server_factory(core, page_size=1, token=FHIR_TOKEN)
    capped = service_trusting(server.base, fetch_max_pages=2)
    body = fetched_from(patient_view_of(core), server.base)

    assert capped.post(PATIENT_VIEW, body).status_code == 200

    assert [r.path for r in server.peer.requests].count("/fhir/Condition") == 2
    reader = LogReader.of(capped)
    try:
        notes = reader.decision(hook_instance=body["hookInstance"])["assessment"]["notes"]
    finally:
        reader.close()
    assert "Only the first 2 pages of 'conditions' were read; the record may hold more." in notes


def test_a_patient_id_that_cannot_fill_a_token_is_refused_before_fetching(
    service: RunningService, fhir_server_factory: StartFhir
) -> None:
    """req 57: only primitive root context fields fill tokens; a non-string patientId is a 400, nothing is fetched."""
    resources = radiculopathy(seed=115)
    server = fhir_server_factory(resources)
    body = fetched_from(patient_view_of(resources), server.base, token=None)
    body["context"]["patientId"] = {"reference": f"Patient/{resources[0]['id']}"}
    response = service.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert server.peer.requests == []


def test_order_hooks_fetch_their_prefetch_too(service_trusting: StartService, fhir_server_factory: StartFhir) -> None:
    """req 61"""
    body = order_sign()
    patient_id = body["context"]["patientId"]
    resources = generate("radiculopathy-knee-pain", today=TODAY)
    assert resources[0]["id"] == patient_id
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    cards = assert_cards_response(service.post("/cds-services/spine-knee-order-sign", fetched_from(body, server.base)))
    assert len(cards) == 1 and cards[0]["summary"].startswith("Knee order drafted")
    assert len(server.peer.requests) == len(PREFETCH_TEMPLATES)
    assert {r.headers["authorization"] for r in server.peer.requests} == {f"Bearer {FHIR_TOKEN}"}
