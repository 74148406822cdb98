"""Hook calls as each EHR sends them, and each client's rules for what it gets back.

Written from the vendors' published CDS Hooks documentation: Epic fills the prefetch from its own FHIR
server (whose Observation search needs `code` or `category`), signs RS384 with a `jku`, names a
PractitionerRole as the user and adds `com.epic.cdshooks.request.*` extensions; Oracle Health sends no
prefetch at all, names the JKU its token is signed under in a published list, removes links that are
not allow-listed and pops up only `critical` cards; the CDS Hooks Sandbox always sends a `jku`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from cds_service.cds_hooks.fetch import render_template
from tests.cds_service.requests import FHIR_TOKEN, fhir_authorization
from tests.support import FhirServer, HttpPeer, SigningEhr

EPIC_CLIENT_ID = "d45049c3-3441-40ef-ab4d-b9cd86a17225"
EPIC_EXTENSIONS = {
    "com.epic.cdshooks.request.bpa-trigger-action": "OnPatientChartOpen",
    "com.epic.cdshooks.request.cds-hooks-specification-version": "1.1",
    "com.epic.cdshooks.request.fhir-version": "R4",
    "com.epic.cdshooks.request.criteria-id": "1234567",
}
# the site's preference-list orderable for a spine referral (Epic needs it to place a specific order)
EPIC_PREFERENCE_LIST = {
    "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580",
    "code": "REF123",
    "display": "Referral to spine clinic",
}
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
# never reachable from a test: fetching it would fail the call, so an answer proves it was not fetched
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9]{1,100}")


@dataclass
class KeyServer:
    """An EHR's key endpoint: its JWK Set at /jwks.json and the list of JKUs it signs under at /jkus.json."""

    ehr: SigningEhr
    peer: HttpPeer = field(init=False)

    def __post_init__(self) -> None:
        self.peer = HttpPeer(self._handle)

    @property
    def jku(self) -> str:
        return self.peer.url + "/jwks.json"

    @property
    def jku_list(self) -> str:
        return self.peer.url + "/jkus.json"

    def _handle(self, path: str, _query: dict[str, list[str]], _headers: dict[str, str]) -> tuple[int, Any]:
        if path == "/jwks.json":
            return 200, self.ehr.jwks
        if path == "/jkus.json":
            return 200, {"jkus": [self.jku]}
        return 404, {"error": "not found"}


def ehr_prefetch(templates: Mapping[str, str], context: Mapping[str, Any], fhir: FhirServer) -> dict[str, Any]:
    """The prefetch an EHR that fills templates from its FHIR server sends: a query its server refuses is left
    out (the service must then fetch it, and would be refused the same way)."""
    prefetch: dict[str, Any] = {}
    with httpx.Client(timeout=10) as client:
        for key, template in templates.items():
            query = render_template(template, context)
            if query is None:
                continue
            response = client.get(f"{fhir.base}/{query}", headers={"Authorization": f"Bearer {FHIR_TOKEN}"})
            if response.status_code == 200:
                prefetch[key] = response.json()
    return prefetch


def epic_token(ehr: SigningEhr, audience: str, jku: str) -> str:
    """An Epic CDS Hooks JWT: RS384 with a jku, `sub` the client id, `nbf` five minutes before `iat`, 15 minutes to live."""
    now = int(time.time())
    return ehr.token(audience, alg="RS384", headers={"jku": jku}, sub=EPIC_CLIENT_ID, iat=now, nbf=now - 300, exp=now + 900)


def epic_call(hook: str, patient_id: str, fhir: FhirServer, templates: Mapping[str, str], **context: Any) -> dict[str, Any]:
    """An Epic hook call: PractitionerRole user, encounter, extensions, the prefetch Epic could fill."""
    full_context = {"userId": "PractitionerRole/pr-1", "patientId": patient_id, "encounterId": "enc-1", **context}
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir.base,
        "fhirAuthorization": {**fhir_authorization(), "subject": EPIC_CLIENT_ID, "patient": patient_id},
        "context": full_context,
        "prefetch": ehr_prefetch(templates, full_context, fhir),
        "extension": dict(EPIC_EXTENSIONS),
    }


def oracle_token(ehr: SigningEhr, audience: str, jku: str) -> str:
    return ehr.token(audience, alg="RS384", headers={"jku": jku})


def oracle_call(hook: str, patient_id: str, fhir: FhirServer, **context: Any) -> dict[str, Any]:
    """An Oracle Health hook call: never a prefetch; the service reads everything from fhirServer."""
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir.base,
        "fhirAuthorization": fhir_authorization(),
        "context": {"userId": "Practitioner/12742069", "patientId": patient_id, **context},
    }


def sandbox_token(ehr: SigningEhr, audience: str) -> str:
    """The CDS Hooks Sandbox's JWT: ES384, and a jku it always sends."""
    return ehr.token(audience, alg="ES384", headers={"jku": SANDBOX_JKU}, sub=None)


# -- each client's rules for the answer ------------------------------------------------------------


def epic_problems(answer: Mapping[str, Any]) -> list[str]:
    """What Epic would refuse or drop: selectionBehavior other than "any", a topic code that is not static
    alphanumeric text of at most 100 characters, a suggestion without a label or not with exactly one
    action, an action without the description Epic shows."""
    problems: list[str] = []
    for i, card in enumerate(answer.get("cards", [])):
        where = f"cards[{i}]"
        topic = (card.get("source") or {}).get("topic") or {}
        if "code" in topic and not _ALPHANUMERIC.fullmatch(str(topic["code"])):
            problems.append(f"{where}.source.topic.code {topic['code']!r} is not alphanumeric (1-100)")
        if card.get("suggestions") and card.get("selectionBehavior") != "any":
            problems.append(f"{where}.selectionBehavior {card.get('selectionBehavior')!r}: Epic supports only 'any'")
        for j, suggestion in enumerate(card.get("suggestions", [])):
            if not suggestion.get("label"):
                problems.append(f"{where}.suggestions[{j}] has no label")
            actions = suggestion.get("actions", [])
            if len(actions) != 1:
                problems.append(f"{where}.suggestions[{j}] has {len(actions)} actions; Epic takes one")
            if any(not a.get("description") for a in actions):
                problems.append(f"{where}.suggestions[{j}] has an action without the description Epic shows")
    for k, action in enumerate(answer.get("systemActions", [])):
        resource = action.get("resource") or {}
        if action.get("type") != "update" or resource.get("resourceType") != "ServiceRequest":
            problems.append(f"systemActions[{k}]: Epic applies only updates of a ServiceRequest")
    return problems


def oracle_problems(answer: Mapping[str, Any], link_allowlist: tuple[str, ...]) -> list[str]:
    """What Oracle Health would remove or pop up: links off its allow-list, `critical` cards."""
    problems: list[str] = []
    for i, card in enumerate(answer.get("cards", [])):
        urls = [link["url"] for link in card.get("links", [])]
        source_url = (card.get("source") or {}).get("url")
        urls += [source_url] if source_url else []
        problems += [f"cards[{i}] links to {url}, off the allow-list" for url in urls if not url.startswith(link_allowlist)]
        if card.get("indicator") == "critical":
            problems.append(f"cards[{i}] is critical: Oracle Health would interrupt the user with it")
    return problems
