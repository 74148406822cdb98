"""Why every decision came out as it did: the reason is logged with the decision and shown in the API, the
decision page and both exports, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from hooks.synthetic import SNOMED, Factory, generate, searchset
from tests.cds_service.audit_log import AuditLog
from tests.cds_service.requests import TODAY, order_sign, overridden, patient_view_of
from tests.support import RunningService, assert_cards_response

API = "/audit/api"
# the calls of tests/cds_service/audit_log.py and the reason each is logged with
REASONS = {
    "likely": "spinal-origin-likely",
    "possible": "spinal-origin-possible",
    "no-card": "no-spinal-evidence",
    "child": "not-eligible",
    "order": "spinal-origin-likely",
    "invalid": "invalid_request",
    "refused": "prefetch_unavailable",
}


def test_every_decision_records_why_in_the_api_page_and_exports(
    audit_log_factory: Callable[..., AuditLog], database_url: str
) -> None:
    log = audit_log_factory(database_url=database_url)
    for name, reason in REASONS.items():
        detail = log.get(f"{API}/decisions/{log.calls[name].id}")
        assert detail.status_code == 200, detail.text
        assert detail.json()["reason"] == reason, name
        page = log.get(f"/audit/decisions/{log.calls[name].id}")
        assert page.status_code == 200
        assert f'<dd id="decision-reason"><code>{reason}</code>' in page.text
    child = log.get(f"/audit/decisions/{log.calls['child'].id}").text
    assert "outside the model&#39;s population" in child or "outside the model's population" in child

    for scope in ({"tenant": log.north}, {"tenant": log.south}):
        rows = list(csv.DictReader(io.StringIO(log.get(f"{API}/export.csv", scope).text)))
        events = [orjson.loads(line) for line in log.get(f"{API}/export.ndjson", scope).content.splitlines()]
        for name, reason in REASONS.items():
            call = log.calls[name]
            if call.tenant != scope["tenant"]:
                continue
            (row,) = [r for r in rows if r["id"] == str(call.id)]
            assert row["reason"] == reason
            (event,) = [e for e in events if e["id"] == f"decision-{call.id}"]
            details = {d["type"]: d.get("valueString") for entity in event["entity"] for d in entity.get("detail", [])}
            assert details["reason"] == reason


def _patient(profile: str) -> list[dict[str, Any]]:
    return generate(profile, today=TODAY)


@pytest.mark.parametrize("profile", ["already-referred", "recent-lumbar-mri", "post-spine-surgery"])
def test_a_patient_in_spine_care_is_logged_as_in_spine_care(
    service: RunningService, read_log: Callable[[RunningService], Any], profile: str
) -> None:
    body = patient_view_of(_patient(profile))
    assert assert_cards_response(service.post("/cds-services/spine-knee-patient-view", body)) == []
    assert read_log(service).decision(hook_instance=body["hookInstance"])["reason"] == "in-spine-care"


def test_a_red_flag_and_an_order_not_for_the_knee_and_a_snooze_each_say_so(
    service: RunningService, read_log: Callable[[RunningService], Any]
) -> None:
    log = read_log(service)
    view = "/cds-services/spine-knee-patient-view"
    flagged = patient_view_of(_patient("cauda-equina"))
    assert len(assert_cards_response(service.post(view, flagged))) == 1
    assert log.decision(hook_instance=flagged["hookInstance"])["reason"] == "red-flag"

    order = order_sign()
    chest = Factory(seed=5, today=TODAY, patient_id=order["context"]["patientId"]).service_request(
        SNOMED, "399208008", "Plain chest X-ray", status="draft", days_ago=0
    )
    order["context"]["draftOrders"] = searchset([chest])
    assert assert_cards_response(service.post("/cds-services/spine-knee-order-sign", order)) == []
    assert log.decision(hook_instance=order["hookInstance"])["reason"] == "not-knee-directed"

    resources = _patient("radiculopathy-knee-pain")
    first = patient_view_of(resources)
    (card,) = assert_cards_response(service.post(view, first))
    assert service.post(view + "/feedback", {"feedback": [overridden(card, "already-evaluated")]}).status_code == 200
    again = patient_view_of(resources)
    assert assert_cards_response(service.post(view, again)) == []
    row = log.decision(hook_instance=again["hookInstance"])
    assert (row["outcome"], row["reason"]) == ("snoozed", "snoozed")
