"""Fixtures for the auditor API and pages: a realistic decision log written through the service's own HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cds_service.auditor.accounts import add_user
from cds_service.decision_log.tables import AccessRecord, Decision
from hooks.synthetic import Factory, generate, prefetch_for, searchset
from tests.cds_service.requests import TODAY, accepted, knee_mri, overridden, patient_view_of
from tests.support import CHEAP_PASSWORD_HASH, RunningService, assert_cards_response

AUDITOR_PASSWORD = "correct horse battery staple"
PATIENT_MASK = "Patient/{{context.patientId}}"  # how the log stores the cards' Patient reference (pipeline._PATIENT_MASK)
BEFORE_MIDDLE = {"likely", "possible", "no-card", "child"}  # logged before AuditLog.middle; the rest after it
FORMULA_USER = '=HYPERLINK("https://evil.example/x","open")'  # an EHR-controlled value that a spreadsheet would run


@dataclass
class LoggedCall:
    """One hook call made while building the log, and what the EHR got back."""

    name: str
    service: str
    hook: str
    hook_instance: str
    tenant: str
    user: str | None
    patient_id: str
    status: int
    outcome: str
    band: str | None
    cards: list[dict[str, Any]]
    id: int = 0


@dataclass
class AuditLog:
    """A service with a realistic log (cards, no card, 400, 412, order-sign, feedback) and an auditor."""

    running: RunningService
    tag: str
    north: str
    south: str
    username: str
    password: str
    start: datetime
    middle: datetime
    end: datetime
    calls: dict[str, LoggedCall] = field(default_factory=dict)

    @property
    def engine(self) -> Any:
        return self.running.app.extensions["spine_cds"].engine

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def patient_ids(self) -> set[str]:
        return {c.patient_id for c in self.calls.values()}

    def names(self, ids: list[int]) -> set[str]:
        by_id = {c.id: c.name for c in self.calls.values()}
        return {by_id[i] for i in ids if i in by_id}

    def get(self, path: str, params: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        """GET as the auditor (HTTP Basic)."""
        kwargs.setdefault("auth", self.auth)
        return self.running.client.get(path, params=params, **kwargs)

    def access_log(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(AccessRecord).order_by(AccessRecord.id)).mappings()
            return [dict(row) for row in rows]

    def assert_no_patient_id(self, text: str) -> None:
        for patient_id in self.patient_ids:
            assert patient_id not in text


def _patient(profile: str) -> list[dict[str, Any]]:
    return generate(profile, seed=uuid.uuid4().int % 10**9, today=TODAY)


def _order_sign_of(resources: list[dict[str, Any]], user: str) -> dict[str, Any]:
    order = knee_mri(Factory(seed=5, today=TODAY, patient_id=resources[0]["id"]))
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": user, "patientId": resources[0]["id"], "draftOrders": searchset([order])},
        "prefetch": prefetch_for(resources),
    }


def build_audit_log(running: RunningService) -> AuditLog:
    """Write the log through signed hook and feedback calls; tenants and the auditor are unique to this log.

    | name     | service      | tenant | user                      | answer                     |
    | likely   | patient-view | north  | Practitioner/dr-1         | 1 card, accepted           |
    | possible | patient-view | north  | PractitionerRole/nurse-7  | 1 card                     |
    | no-card  | patient-view | south  | a spreadsheet formula     | no card (unlikely)         |
    | child    | patient-view | south  | Practitioner/dr-2         | no card (not assessed)     |
    | order    | order-sign   | south  | Practitioner/dr-1         | 1 card, overridden         |
    | invalid  | patient-view | north  | (missing)                 | 400 invalid_request        |
    | refused  | patient-view | north  | Practitioner/dr-1         | 412, the likely patient    |
    """
    tag = uuid.uuid4().hex[:8]
    north, south = f"north-{tag}", f"south-{tag}"
    username = f"auditor-{tag}"
    add_user(running.app.extensions["spine_cds"].engine, username, AUDITOR_PASSWORD, method=CHEAP_PASSWORD_HASH)
    now = datetime.now(UTC)
    log = AuditLog(running, tag, north, south, username, AUDITOR_PASSWORD, start=now, middle=now, end=now)
    view = "/cds-services/spine-knee-patient-view"
    order_sign = "/cds-services/spine-knee-order-sign"

    def call(
        name: str, path: str, body: dict[str, Any], tenant: str, user: str | None, status: int, outcome: str, band: str | None
    ) -> LoggedCall:
        if user is None:
            del body["context"]["userId"]
        else:
            body["context"]["userId"] = user
        response = running.post(path, body, tenant=tenant)
        assert response.status_code == status, response.text
        cards = assert_cards_response(response) if status == 200 else []
        logged = LoggedCall(
            name,
            path.rsplit("/", 1)[1],
            body["hook"],
            body["hookInstance"],
            tenant,
            user,
            body["context"]["patientId"],
            status,
            outcome,
            band,
            cards,
        )
        log.calls[name] = logged
        return logged

    likely = _patient("radiculopathy-knee-pain")
    call("likely", view, patient_view_of(likely), north, "Practitioner/dr-1", 200, "cards", "likely")
    call(
        "possible",
        view,
        patient_view_of(_patient("double-coded-episode")),
        north,
        "PractitionerRole/nurse-7",
        200,
        "cards",
        "possible",
    )
    call("no-card", view, patient_view_of(_patient("knee-oa-only")), south, FORMULA_USER, 200, "no-card", "unlikely")
    call("child", view, patient_view_of(_patient("child")), south, "Practitioner/dr-2", 200, "no-card", None)
    log.middle = datetime.now(UTC)
    order = _order_sign_of(_patient("radiculopathy-knee-pain"), "Practitioner/dr-1")
    call("order", order_sign, order, south, "Practitioner/dr-1", 200, "cards", "likely")
    call("invalid", view, patient_view_of(_patient("radiculopathy-knee-pain")), north, None, 400, "invalid_request", None)
    call("refused", view, patient_view_of(likely, prefetch=False), north, "Practitioner/dr-1", 412, "prefetch_unavailable", None)

    # feedback comes from the tenant whose call issued the card
    feedback = running.post(view + "/feedback", {"feedback": [accepted(log.calls["likely"].cards[0])]}, tenant=north)
    assert feedback.status_code == 200, feedback.text
    override = overridden(log.calls["order"].cards[0], code="knee-cause-confirmed", comment="Meniscal tear on exam")
    feedback = running.post(order_sign + "/feedback", {"feedback": [override]}, tenant=south)
    assert feedback.status_code == 200, feedback.text
    log.end = datetime.now(UTC)

    instances = [c.hook_instance for c in log.calls.values()]
    with log.engine.connect() as connection:
        rows = connection.execute(
            select(Decision.id, Decision.service_id, Decision.hook_instance).where(Decision.hook_instance.in_(instances))
        ).all()
    ids = {(r.service_id, r.hook_instance): r.id for r in rows}
    assert len(ids) == len(log.calls)
    for logged in log.calls.values():
        logged.id = ids[(logged.service, logged.hook_instance)]
    return log


@pytest.fixture(scope="module")
def audit_log(module_service: RunningService) -> AuditLog:
    """One realistic log on SQLite shared by a test module (tests only read it; access rows are counted as deltas)."""
    return build_audit_log(module_service)


@pytest.fixture
def audit_log_factory(service_factory: Callable[..., RunningService]) -> Callable[..., AuditLog]:
    """Build a realistic log on a fresh service with these settings (e.g. database_url=...)."""

    def build(**settings: Any) -> AuditLog:
        return build_audit_log(service_factory(**settings))

    return build
