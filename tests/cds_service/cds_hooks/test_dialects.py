"""Each EHR's dialect replayed over real HTTP: real JWT signing and key endpoints, a FHIR server that behaves
like the EHR's, and the answer checked against that client's rules as well as the specification's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from hooks.synthetic import Factory, generate
from tests.cds_service.cds_hooks.dialects import (
    EPIC_PREFERENCE_LIST,
    SANDBOX_ISSUER,
    KeyServer,
    epic_call,
    epic_problems,
    epic_token,
    oracle_call,
    oracle_problems,
    oracle_token,
    sandbox_token,
)
from tests.cds_service.requests import FHIR_TOKEN, PREFETCH_TEMPLATES, TODAY, accepted, knee_mri, patient_view
from tests.support import FhirServer, RunningService, SigningEhr, assert_cards_response, card_problems, error_of

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
ORDER_SIGN = "/cds-services/spine-knee-order-sign"
# the URL the health system registered with Oracle Health (SPINE_CDS_PUBLIC_BASE_URL): the token's aud
ORACLE_REGISTERED = "https://cds.hospital.example"
StartService = Callable[..., RunningService]
StartFhir = Callable[..., FhirServer]


@pytest.fixture
def key_server_factory() -> Iterator[Callable[[SigningEhr], KeyServer]]:
    with ExitStack() as stack:

        def start(ehr: SigningEhr) -> KeyServer:
            server = KeyServer(ehr)
            stack.enter_context(server.peer.running())
            return server

        yield start


def post(running: RunningService, path: str, body: Any, token: str) -> httpx.Response:
    return running.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


def record(seed: int = 0) -> list[dict[str, Any]]:
    """A record that gives the referral card, and the PractitionerRole an Epic user token names."""
    return [*generate("radiculopathy-knee-pain", seed=seed, today=TODAY), {"resourceType": "PractitionerRole", "id": "pr-1"}]


# -- Epic ------------------------------------------------------------------------------------------


@pytest.fixture
def epic(
    service_factory: StartService, fhir_server_factory: StartFhir, key_server_factory: Callable[[SigningEhr], KeyServer]
) -> Callable[..., tuple[RunningService, FhirServer, SigningEhr, KeyServer]]:
    """A service registered with an Epic organisation: its FHIR server refuses Observation searches by patient
    alone, its JWTs are RS384 with a jku at its key endpoint, its `iss` is its FHIR endpoint."""

    def start(
        resources: list[dict[str, Any]], **issuer_settings: Any
    ) -> tuple[RunningService, FhirServer, SigningEhr, KeyServer]:
        fhir = fhir_server_factory(resources, token=FHIR_TOKEN, require_observation_filter=True)
        ehr = SigningEhr(issuer=fhir.base)
        keys = key_server_factory(ehr)
        issuer = {"profile": "epic", "jwks_url": keys.jku, "fhir_servers": [fhir.base], **issuer_settings}
        # a site template using an Epic user token: read with the rest, by Epic and by the fetch path
        running = service_factory(
            trusted_issuers={ehr.issuer: issuer}, prefetch={"practitionerRole": "PractitionerRole/{{userPractitionerRoleId}}"}
        )
        return running, fhir, ehr, keys

    return start


def discovery_templates(running: RunningService, token: str) -> dict[str, str]:
    response = running.client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    templates: dict[str, str] = response.json()["services"][0]["prefetch"]
    return templates


def test_epic_fills_every_template_and_its_patient_view_gets_a_card_epic_accepts(epic: Any) -> None:
    resources = record(seed=301)
    running, fhir, ehr, keys = epic(resources, order_codings=[EPIC_PREFERENCE_LIST])
    templates = discovery_templates(running, epic_token(ehr, running.base_url + "/cds-services", keys.jku))
    assert templates["practitionerRole"] == "PractitionerRole/{{userPractitionerRoleId}}"
    # the server really enforces Epic's rule: the old patient-only template is refused
    refused = httpx.get(
        f"{fhir.base}/Observation?patient={resources[0]['id']}", headers={"Authorization": f"Bearer {FHIR_TOKEN}"}
    )
    assert refused.status_code == 400

    body = epic_call("patient-view", resources[0]["id"], fhir, templates)
    assert set(body["prefetch"]) == set(templates)  # nothing the EHR's server refused
    fhir.peer.requests.clear()
    response = post(running, PATIENT_VIEW, body, epic_token(ehr, running.base_url + PATIENT_VIEW, keys.jku))

    cards = assert_cards_response(response)
    assert len(cards) == 1 and cards[0]["indicator"] == "warning"
    assert card_problems(cards[0]) == []
    assert epic_problems(response.json()) == []
    referral = cards[0]["suggestions"][0]["actions"][0]["resource"]
    assert EPIC_PREFERENCE_LIST in referral["code"]["coding"]
    assert referral["code"]["coding"][0]["system"] == "http://snomed.info/sct"  # the standard code stays first
    assert referral["requester"] == {"reference": "PractitionerRole/pr-1"}
    assert fhir.peer.requests == []  # the prefetch was complete: nothing fetched


def test_epic_calls_whose_prefetch_epic_left_out_are_fetched_within_its_search_rules(epic: Any) -> None:
    resources = record(seed=302)
    running, fhir, ehr, keys = epic(resources)
    body = epic_call("patient-view", resources[0]["id"], fhir, {})  # Epic sent no prefetch at all
    fhir.peer.requests.clear()

    response = post(running, PATIENT_VIEW, body, epic_token(ehr, running.base_url + PATIENT_VIEW, keys.jku))

    assert len(assert_cards_response(response)) == 1
    assert epic_problems(response.json()) == []
    observation_searches = [r.query for r in fhir.peer.requests if r.path == "/fhir/Observation"]
    assert len(observation_searches) == 2
    assert all({"code", "category"} & set(query) for query in observation_searches)
    assert "/fhir/PractitionerRole/pr-1" in {r.path for r in fhir.peer.requests}


def test_an_epic_token_carries_nbf_sub_and_15_minutes_and_unknown_extensions_are_ignored(
    epic: Any, service_factory: StartService
) -> None:
    resources = record(seed=303)
    running, fhir, ehr, keys = epic(resources)
    body = epic_call("patient-view", resources[0]["id"], fhir, PREFETCH_TEMPLATES)
    body["extension"]["com.epic.cdshooks.request.unheard-of"] = {"nested": [1, 2]}

    assert post(running, PATIENT_VIEW, body, epic_token(ehr, running.base_url + PATIENT_VIEW, keys.jku)).status_code == 200

    # the same token from an issuer configured without the Epic profile outlives the 5-minute default
    generic = service_factory(trusted_issuers={ehr.issuer: {"jwks_url": keys.jku, "fhir_servers": [fhir.base]}})
    refused = post(generic, PATIENT_VIEW, body, epic_token(ehr, generic.base_url + PATIENT_VIEW, keys.jku))
    assert refused.status_code == 401


def test_epic_audience_is_the_exact_registered_url(epic: Any) -> None:
    resources = record(seed=304)
    running, fhir, ehr, keys = epic(resources)
    body = epic_call("patient-view", resources[0]["id"], fhir, PREFETCH_TEMPLATES)
    for audience in (running.base_url + PATIENT_VIEW + "/", running.base_url + "/cds-services", running.base_url + ORDER_SIGN):
        assert post(running, PATIENT_VIEW, body, epic_token(ehr, audience, keys.jku)).status_code == 401
    assert post(running, PATIENT_VIEW, body, epic_token(ehr, running.base_url + PATIENT_VIEW, keys.jku)).status_code == 200


def test_epic_order_sign_annotates_the_drafted_knee_order_when_the_site_turns_it_on(epic: Any) -> None:
    """req 75: a systemActions array beside the cards, updating the drafted order with a note."""
    resources = record(seed=305)
    running, fhir, ehr, keys = epic(resources, annotate_orders=True)
    order = knee_mri(Factory(seed=9, today=TODAY, patient_id=resources[0]["id"]))
    draft_orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}
    body = epic_call("order-sign", resources[0]["id"], fhir, PREFETCH_TEMPLATES, draftOrders=draft_orders)

    response = post(running, ORDER_SIGN, body, epic_token(ehr, running.base_url + ORDER_SIGN, keys.jku))

    cards = assert_cards_response(response)
    assert len(cards) == 1
    assert epic_problems(response.json()) == []
    (action,) = response.json()["systemActions"]
    annotated = action["resource"]
    assert annotated["id"] == order["id"] and annotated["status"] == "draft"
    assert annotated["code"] == order["code"]  # only a note is added
    assert annotated["note"][-1]["text"] == (
        f"Spine-origin knee pain assessment {cards[0]['uuid']}: likely; consider the lumbar spine first."
    )
    # a retry of the same call answers the same, annotation included
    retry = post(running, ORDER_SIGN, body, epic_token(ehr, running.base_url + ORDER_SIGN, keys.jku))
    assert retry.json() == response.json()


def test_no_annotation_unless_the_site_turns_it_on(epic: Any) -> None:
    resources = record(seed=306)
    running, fhir, ehr, keys = epic(resources)
    order = knee_mri(Factory(seed=9, today=TODAY, patient_id=resources[0]["id"]))
    draft_orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}
    body = epic_call("order-sign", resources[0]["id"], fhir, PREFETCH_TEMPLATES, draftOrders=draft_orders)

    response = post(running, ORDER_SIGN, body, epic_token(ehr, running.base_url + ORDER_SIGN, keys.jku))

    assert len(assert_cards_response(response)) == 1
    assert "systemActions" not in response.json()


# -- Oracle Health ---------------------------------------------------------------------------------


@pytest.fixture
def oracle(
    service_factory: StartService, fhir_server_factory: StartFhir, key_server_factory: Callable[[SigningEhr], KeyServer]
) -> Callable[..., tuple[RunningService, FhirServer, SigningEhr, KeyServer]]:
    """A service registered with Oracle Health: no prefetch ever, the token's jku on the issuer's published list."""

    def start(
        resources: list[dict[str, Any]], **issuer_settings: Any
    ) -> tuple[RunningService, FhirServer, SigningEhr, KeyServer]:
        fhir = fhir_server_factory(resources, token=FHIR_TOKEN)
        ehr = SigningEhr(issuer="https://cds.oracle-health.example/issuer")
        keys = key_server_factory(ehr)
        issuer = {
            "profile": "oracle",
            "jku_list_url": keys.jku_list,
            "fhir_servers": [fhir.base],
            "link_allowlist": [ORACLE_REGISTERED + "/"],
            **issuer_settings,
        }
        running = service_factory(trusted_issuers={ehr.issuer: issuer}, public_base_url=ORACLE_REGISTERED)
        return running, fhir, ehr, keys

    return start


def test_oracle_sends_no_prefetch_and_gets_the_card_from_the_fetch_path(oracle: Any) -> None:
    resources = record(seed=311)
    running, fhir, ehr, keys = oracle(resources)
    body = oracle_call("patient-view", resources[0]["id"], fhir)

    response = post(running, PATIENT_VIEW, body, oracle_token(ehr, ORACLE_REGISTERED + PATIENT_VIEW, keys.jku))

    cards = assert_cards_response(response)
    assert len(cards) == 1 and card_problems(cards[0]) == []
    assert oracle_problems(response.json(), (ORACLE_REGISTERED + "/",)) == []
    # the service's own pages are registered as an allowed link target, so its links stay
    assert cards[0]["links"] and cards[0]["source"]["url"] == ORACLE_REGISTERED + "/model"
    assert len(fhir.peer.requests) == len(PREFETCH_TEMPLATES)


def test_oracle_links_off_the_allow_list_are_left_off_not_sent_to_be_removed(oracle: Any) -> None:
    resources = record(seed=312)
    running, fhir, ehr, keys = oracle(resources, link_allowlist=["https://intranet.example.org/"])
    body = oracle_call("patient-view", resources[0]["id"], fhir)

    response = post(running, PATIENT_VIEW, body, oracle_token(ehr, ORACLE_REGISTERED + PATIENT_VIEW, keys.jku))

    cards = assert_cards_response(response)
    assert len(cards) == 1 and card_problems(cards[0]) == []
    assert "links" not in cards[0] and "url" not in cards[0]["source"]
    assert oracle_problems(response.json(), ("https://intranet.example.org/",)) == []


def test_an_oracle_token_whose_jku_is_not_on_the_published_list_is_refused_unfetched(oracle: Any) -> None:
    resources = record(seed=313)
    running, fhir, ehr, keys = oracle(resources)
    body = oracle_call("patient-view", resources[0]["id"], fhir)
    unlisted = keys.peer.url + "/elsewhere/jwks.json"

    response = post(running, PATIENT_VIEW, body, oracle_token(ehr, ORACLE_REGISTERED + PATIENT_VIEW, unlisted))

    assert response.status_code == 401
    assert [r.path for r in keys.peer.requests] == ["/jkus.json"]
    assert fhir.peer.requests == []


# -- the CDS Hooks Sandbox -------------------------------------------------------------------------


def test_the_sandbox_flow_works_with_its_keys_pinned_and_no_network(service_factory: StartService) -> None:
    """The Sandbox always sends a jku; with its key pinned inline nothing is fetched (the jku's host is not
    reachable from here, so any fetch would have refused the call)."""
    sandbox = SigningEhr(issuer=SANDBOX_ISSUER)
    running = service_factory(trusted_issuers={SANDBOX_ISSUER: {"jwks": sandbox.jwks}})

    discovery = running.client.get(
        "/cds-services", headers={"Authorization": f"Bearer {sandbox_token(sandbox, running.base_url + '/cds-services')}"}
    )
    assert discovery.status_code == 200
    response = post(running, PATIENT_VIEW, patient_view(seed=314), sandbox_token(sandbox, running.base_url + PATIENT_VIEW))
    cards = assert_cards_response(response)
    assert len(cards) == 1 and card_problems(cards[0]) == []
    feedback_path = PATIENT_VIEW + "/feedback"
    stored = post(
        running, feedback_path, {"feedback": [accepted(cards[0])]}, sandbox_token(sandbox, running.base_url + feedback_path)
    )
    assert stored.status_code == 200, error_of(stored)
