"""Bounded fetching over real HTTP: prefetched pages are followed, slow and huge FHIR servers are cut off.

The hostile servers here are real HTTP servers; a server that drips its answer does so with a short pause
between bytes, which is its behaviour, not the test's synchronisation: the test asserts what the call
answers, never how long it took.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from hooks.synthetic import ICD10, Factory, generate, prefetch_for, searchset
from tests.cds_service.requests import FHIR_TOKEN, TODAY, fetched_from, fhir_authorization, patient_view_of
from tests.support import FhirServer, LogReader, RunningService, assert_cards_response, error_of, http_server

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
StartFhir = Callable[..., FhirServer]
StartService = Callable[..., RunningService]


def split_conditions(seed: int, server: FhirServer | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The radiculopathy patient with its spinal findings only on page 2 of a prefetched Condition search."""
    resources = generate("radiculopathy-knee-pain", seed=seed, today=TODAY)
    body = patient_view_of(resources)
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    knee, spinal = conditions[:1], conditions[1:]
    first = searchset(knee)
    patient = resources[0]["id"]
    if server is not None:
        first["link"] = [{"relation": "next", "url": f"{server.base}/Condition?patient={patient}&_offset=1"}]
    else:
        first["link"] = [{"relation": "next", "url": f"https://ehr.example.org/fhir/Condition?patient={patient}&_offset=1"}]
    body["prefetch"]["conditions"] = first
    return spinal, body


def test_a_prefetched_bundle_with_a_next_link_is_read_to_its_last_page(
    service_trusting: StartService, fhir_server_factory: StartFhir, read_log: Callable[[RunningService], LogReader]
) -> None:
    resources = generate("radiculopathy-knee-pain", seed=211, today=TODAY)
    server = fhir_server_factory(resources, page_size=1, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    spinal, body = split_conditions(211, server)
    body = body | {"fhirServer": server.base, "fhirAuthorization": fhir_authorization()}

    (card,) = assert_cards_response(service.post(PATIENT_VIEW, body))

    assert card["indicator"] == "warning"  # the findings on pages 2 and later counted
    follow_ups = [r for r in server.peer.requests if r.path == "/fhir/Condition"]
    assert follow_ups and all(r.headers["authorization"] == f"Bearer {FHIR_TOKEN}" for r in follow_ups)
    logged = read_log(service).decision(hook_instance=body["hookInstance"])["assessment"]
    references = {ref for f in logged["findings"] for ref in f["references"]}
    assert {f"Condition/{c['id']}" for c in spinal} <= references


def test_without_a_fhir_server_the_unread_pages_are_a_data_quality_note(
    module_service: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    _, body = split_conditions(212, None)
    assert assert_cards_response(module_service.post(PATIENT_VIEW, body)) == []
    notes = read_log(module_service).decision(hook_instance=body["hookInstance"])["assessment"]["notes"]
    assert "Prefetch 'conditions' has further pages that were not read (no fhirServer with a token)." in notes


def test_a_next_link_to_another_server_is_not_followed(
    service_trusting: StartService, fhir_server_factory: StartFhir, read_log: Callable[[RunningService], LogReader]
) -> None:
    resources = generate("radiculopathy-knee-pain", seed=213, today=TODAY)
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base)
    _, body = split_conditions(213, None)  # the next link names https://ehr.example.org, not this server
    body = body | {"fhirServer": server.base, "fhirAuthorization": fhir_authorization()}
    assert assert_cards_response(service.post(PATIENT_VIEW, body)) == []
    assert server.peer.requests == []  # the token went nowhere
    notes = read_log(service).decision(hook_instance=body["hookInstance"])["assessment"]["notes"]
    assert any("another server was not fetched" in note for note in notes)


# -- hostile FHIR servers ---------------------------------------------------------------------------


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A FHIR server that sends its headers, then one byte at a time without end (until the test ends)."""
    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.end_headers()
            try:
                self.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
                while not stop.wait(0.05):  # the server's own pace, never the test's synchronisation
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass  # the service hung up: what it should do

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Drip) as url:
        yield url + "/fhir"
        stop.set()


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return body | {"prefetch": {k: v for k, v in body["prefetch"].items() if k != key}}


def test_a_server_that_drips_its_answer_is_cut_off_at_the_deadline(
    service_trusting: StartService, dripping_server: str, read_log: Callable[[RunningService], LogReader]
) -> None:
    service = service_trusting(dripping_server, fetch_deadline_seconds=0.5, fetch_timeout_seconds=5)
    resources = generate("radiculopathy-knee-pain", seed=214, today=TODAY)
    body = without(patient_view_of(resources), "observations") | {
        "fhirServer": dripping_server,
        "fhirAuthorization": fhir_authorization(),
    }
    response = service.post(PATIENT_VIEW, body)
    assert response.status_code == 412
    assert error_of(response)["details"]["keys"] == ["observations"]
    row = read_log(service).decision(hook_instance=body["hookInstance"])
    assert (row["outcome"], row["status_code"]) == ("prefetch_unavailable", 412)


def test_a_call_with_full_prefetch_is_answered_while_others_wait_on_a_dripping_server(
    service_trusting: StartService, dripping_server: str
) -> None:
    """Many calls stuck on a slow server do not take the threads a call with its prefetch needs."""
    service = service_trusting(dripping_server, fetch_deadline_seconds=2, fetch_timeout_seconds=5)
    stuck = []
    for seed in range(215, 223):
        body = without(patient_view_of(generate("radiculopathy-knee-pain", seed=seed, today=TODAY)), "observations")
        stuck.append(body | {"fhirServer": dripping_server, "fhirAuthorization": fhir_authorization()})
    results: list[int] = []
    threads = [threading.Thread(target=lambda b=b: results.append(service.post(PATIENT_VIEW, b).status_code)) for b in stuck]
    for thread in threads:
        thread.start()
    full = patient_view_of(generate("radiculopathy-knee-pain", seed=230, today=TODAY))
    assert len(assert_cards_response(service.post(PATIENT_VIEW, full))) == 1
    for thread in threads:
        thread.join()
    assert results == [412] * len(stuck)


def test_a_response_over_the_size_cap_is_not_read(
    service_trusting: StartService, fhir_server_factory: StartFhir, read_log: Callable[[RunningService], LogReader]
) -> None:
    resources = generate("radiculopathy-knee-pain", seed=224, today=TODAY)
    padding = Factory(seed=225, today=TODAY, patient_id=resources[0]["id"])
    resources += [padding.condition(ICD10, "I10", "Essential hypertension " + "x" * 500) for _ in range(20)]
    server = fhir_server_factory(resources, token=FHIR_TOKEN)
    service = service_trusting(server.base, fetch_max_response_bytes=4096)
    body = fetched_from(patient_view_of(resources), server.base)
    body["prefetch"] = {k: v for k, v in prefetch_for(resources).items() if k != "conditions"}
    response = service.post(PATIENT_VIEW, body)
    assert response.status_code == 412
    assert error_of(response)["details"]["keys"] == ["conditions"]
