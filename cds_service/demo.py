"""`spine-cds demo`: the service on embedded defaults, exercised end to end like an EHR would.

A signing key is generated and trusted for a local demo issuer; the service runs on SQLite; signed
hook calls go out for synthetic patients of every profile; their cards are printed; feedback is sent.
"""

from __future__ import annotations

import json
import logging
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service.app import create_app
from hooks.synthetic import PROFILES, SNOMED, Factory, generate, prefetch_for, searchset

DEMO_ISSUER = "urn:spine-cds:demo-ehr"


class DemoEhr:
    """Signs calls as an EHR would (ES384, a fresh jti each time) and sends them."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._key = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        public.update(kid="demo-1", alg="ES384", use="sig")
        self.jwks = {"keys": [public]}
        self.client = httpx.Client(base_url=base_url, timeout=10)

    def token(self, path: str) -> str:
        now = int(time.time())
        claims = {
            "iss": DEMO_ISSUER,
            "sub": "demo-ehr",
            "aud": self.base_url + path,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm="ES384", headers={"kid": "demo-1", "typ": "JWT"})

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.post(path, json=body, headers={"Authorization": f"Bearer {self.token(path)}"})

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path, headers={"Authorization": f"Bearer {self.token(path)}"})


def _print_card(card: dict[str, Any], echo: Callable[[str], None]) -> None:
    echo(f"    [{card['indicator'].upper()}] {card['summary']}")
    for line in card.get("detail", "").splitlines():
        if line.startswith("| ") and not line.startswith("| Finding"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            echo(f"      - {cells[0]}: {cells[3]} points ({cells[1]}, {cells[2]})")
        elif line.startswith("- "):
            echo(textwrap.fill(line, 100, initial_indent="      ", subsequent_indent="        "))
    for suggestion in card.get("suggestions", []):
        echo(f"    suggestion: {suggestion['label']}")


def _unready(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


def run_demo(host: str, port: int, instance: Path, once: bool, echo: Callable[[str], None]) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # keep the printed cards readable
    # bind first, so that --port 0 knows its port before the app needs its public URL
    server: BaseWSGIServer = make_server(host, port, _unready, threaded=True)
    base_url = f"http://{host}:{server.server_port}"
    ehr = DemoEhr(base_url)
    server.app = create_app(
        {
            "instance_path": str(instance),
            "public_base_url": base_url,
            "trusted_issuers": {DEMO_ISSUER: {"jwks": ehr.jwks}},
        }
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    echo(f"Service running at {base_url} (decision log: {instance.resolve()})")

    services = ehr.get("/cds-services").json()["services"]
    echo(f"Discovery lists {len(services)} services: " + ", ".join(s["id"] for s in services) + "\n")
    shown: list[dict[str, Any]] = []
    for profile in PROFILES:
        resources = generate(profile)
        patient_id = resources[0]["id"]
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/demo-clinician", "patientId": patient_id},
            "prefetch": prefetch_for(resources),
        }
        response = ehr.post("/cds-services/spine-knee-patient-view", body)
        cards = response.json().get("cards", [])
        echo(f"{profile.name} ({profile.description}): {len(cards)} card(s)")
        for card in cards:
            _print_card(card, echo)
            shown.append(card)

    # an order-sign call: a knee MRI drafted for the radiculopathy patient
    resources = generate("radiculopathy-knee-pain")
    factory = Factory(seed=7, patient_id=resources[0]["id"])
    mri = factory.service_request(SNOMED, "241641004", "MRI of knee", status="draft", days_ago=0)
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/demo-clinician", "patientId": resources[0]["id"], "draftOrders": searchset([mri])},
        "prefetch": prefetch_for(resources),
    }
    cards = ehr.post("/cds-services/spine-knee-order-sign", body).json().get("cards", [])
    echo(f"\norder-sign with a knee MRI drafted: {len(cards)} card(s)")
    for card in cards:
        _print_card(card, echo)

    if len(shown) >= 2:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        accepted, overridden = shown[0], shown[1]
        feedback = {
            "feedback": [
                {
                    "card": accepted["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": accepted["suggestions"][0]["uuid"]}],
                    "outcomeTimestamp": now,
                },
                {
                    "card": overridden["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": overridden["overrideReasons"][2], "userComment": "Prefers to wait"},
                    "outcomeTimestamp": now,
                },
            ]
        }
        response = ehr.post("/cds-services/spine-knee-patient-view/feedback", feedback)
        echo(f"\nFeedback sent (one accepted, one overridden): HTTP {response.status_code} {response.json()}")

    if once:
        server.shutdown()
        return
    echo(f"\nStill serving at {base_url}; press Ctrl-C to stop. Model documentation: {base_url}/model")
    echo(
        f"Decision log for auditors: {base_url}/audit (create an account first with "
        f"`SPINE_CDS_INSTANCE_PATH={instance} spine-cds users add NAME`)"
    )
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
