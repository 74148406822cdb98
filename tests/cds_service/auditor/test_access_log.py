"""The access log for auditors: who searched or opened which decision, by auditor, decision, patient and time;
over the API, on the page and as FHIR AuditEvents, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tests.cds_service.audit_log import AuditLog

API = "/audit/api"


def entries(log: AuditLog, **params: Any) -> list[dict[str, Any]]:
    response = log.get(f"{API}/access", {"auditor": log.username, "per_page": 500, **params})
    assert response.status_code == 200, response.text
    log.assert_no_patient_id(response.text)
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_the_access_log_answers_who_looked_at_which_decision_and_patient(
    audit_log_factory: Callable[..., AuditLog], database_url: str
) -> None:
    log = audit_log_factory(database_url=database_url)
    likely, order = log.calls["likely"], log.calls["order"]
    assert log.get(f"/audit/decisions/{likely.id}").status_code == 200  # the page
    assert log.get(f"{API}/decisions/{order.id}").status_code == 200  # the API
    assert log.get(f"{API}/decisions", {"patient": likely.patient_id}).status_code == 200

    by_decision = entries(log, decision=likely.id)
    assert [e["action"] for e in by_decision] == ["page.view"]
    assert entries(log, decision=order.id)[0]["action"] == "api.view"
    by_patient = {e["action"] for e in entries(log, patient=likely.patient_id)}
    # the decision opened, the search that named the patient, and this very question (logged before it is answered)
    assert by_patient == {"page.view", "api.search", "api.access.search"}
    assert "api.view" not in by_patient  # the order decision is another patient's
    everything = entries(log)
    assert {"page.view", "api.view", "api.search", "api.access.search"} <= {e["action"] for e in everything}
    assert all(e["username"] == log.username for e in everything)
    assert entries(log, auditor="someone-else") == []
    newest_first = [e["id"] for e in everything]
    assert newest_first == sorted(newest_first, reverse=True)

    export = log.get(f"{API}/access/export.ndjson", {"auditor": log.username, "decision": likely.id})
    assert export.status_code == 200 and export.headers["Content-Type"].startswith("application/fhir+ndjson")
    (event,) = [orjson.loads(line) for line in export.content.splitlines()]
    assert event["resourceType"] == "AuditEvent" and event["action"] == "R"
    assert event["agent"][0]["who"]["identifier"] == {"system": "urn:spine-cds:auditor", "value": log.username}
    assert {"system": "urn:spine-cds:decision", "value": str(likely.id)} in [e["what"]["identifier"] for e in event["entity"]]
    log.assert_no_patient_id(export.text)
    assert {e["action"] for e in entries(log)} >= {"api.access.export"}  # reading the access log is logged too


def test_the_access_log_page_lists_and_filters_entries(audit_log: AuditLog) -> None:
    likely = audit_log.calls["likely"]
    assert audit_log.get(f"/audit/decisions/{likely.id}").status_code == 200
    page = audit_log.get("/audit/access", {"auditor": audit_log.username, "decision": likely.id})
    assert page.status_code == 200
    assert page.text.count('class="access-row"') >= 1
    assert f'href="/audit/decisions/{likely.id}"' in page.text
    assert 'id="access-export"' in page.text
    audit_log.assert_no_patient_id(page.text)
    refused = audit_log.get("/audit/access", {"decision": "not-a-number"})
    assert refused.status_code == 400 and "must be a decision id" in refused.text


def test_bad_access_log_queries_are_400(audit_log: AuditLog) -> None:
    for params in ({"decision": "0"}, {"decision": "x"}, {"from": "yesterday"}, {"sort": "id"}, {"per_page": "0"}):
        response = audit_log.get(f"{API}/access", params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["code"] in ("invalid_filter", "invalid_page")
