"""Exports over real HTTP: FHIR R4 AuditEvents as NDJSON (validated with fhir.resources R4B) and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from cds_service.decision_log.export import CSV_COLUMNS, audit_event, audit_outcome
from tests.cds_service.audit_log import FORMULA_USER, AuditLog

API = "/audit/api"
ALL = {"likely", "possible", "no-card", "child", "order", "invalid", "refused"}
NORTH = {"likely", "possible", "invalid", "refused"}


def ndjson(log: AuditLog, **params: Any) -> list[dict[str, Any]]:
    response = log.get(f"{API}/export.ndjson", params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+ndjson"
    assert response.headers["content-disposition"] == 'attachment; filename="decisions.ndjson"'
    log.assert_no_patient_id(response.text)
    assert response.text == "" or response.text.endswith("\n")
    lines = response.text.splitlines()
    assert all(line.strip() for line in lines)
    return [json.loads(line) for line in lines]


def csv_rows(log: AuditLog, **params: Any) -> list[dict[str, str]]:
    response = log.get(f"{API}/export.csv", params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    log.assert_no_patient_id(response.text)
    reader = csv.DictReader(io.StringIO(response.text))
    rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return rows


def by_decision(events: list[dict[str, Any]], log: AuditLog) -> dict[str, dict[str, Any]]:
    names = {str(c.id): c.name for c in log.calls.values()}
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        entity = next(e for e in event["entity"] if e["what"]["identifier"]["system"] == "urn:spine-cds:decision")
        found[names[entity["what"]["identifier"]["value"]]] = event
    return found


def details(event: dict[str, Any]) -> list[tuple[str, str]]:
    decision = next(e for e in event["entity"] if e["what"]["identifier"]["system"] == "urn:spine-cds:decision")
    return [(d["type"], d["valueString"]) for d in decision["detail"]]


def check_ndjson(log: AuditLog, events: list[dict[str, Any]], names: set[str]) -> None:
    for event in events:
        AuditEvent.model_validate(event)
    found = by_decision(events, log)
    assert set(found) == names and len(events) == len(names)
    ids = [int(e["id"].removeprefix("decision-")) for e in events]
    assert ids == sorted(ids)  # oldest first
    for name, event in found.items():
        call = log.calls[name]
        assert event["resourceType"] == "AuditEvent"
        assert event["type"] == {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        }
        assert event["subtype"] == [{"system": "urn:spine-cds:hook", "code": call.hook}]
        assert event["action"] == "E"
        assert event["outcome"] == ("0" if call.status == 200 else "4")
        assert event["outcomeDesc"] == call.outcome
        assert event["source"]["observer"] == {"display": "spine-cds"}
        assert event["source"]["type"] == [
            {"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}
        ]
        client, *middle, server = event["agent"]
        assert client["who"]["identifier"] == {"system": "urn:spine-cds:issuer", "value": log.running.ehr.issuer}
        assert client["type"]["coding"][0]["code"] == "110153"
        assert server["who"]["identifier"] == {"system": "urn:spine-cds:service", "value": call.service}
        assert server["type"]["coding"][0]["code"] == "110152" and server["requestor"] is False
        if call.user is None:
            assert middle == [] and client["requestor"] is True
        else:
            (user,) = middle
            assert client["requestor"] is False and user["requestor"] is True
            assert user["type"]["coding"][0]["code"] == "IRCP"
            if call.user.startswith("Practitioner"):
                assert user["who"] == {"reference": call.user}
            else:
                assert user["who"] == {"identifier": {"system": "urn:spine-cds:user", "value": call.user}}
        decision = log.get(f"{API}/decisions/{call.id}").json()
        assert event["recorded"] == decision["created_at"]
        patients = [e for e in event["entity"] if e["what"]["identifier"]["system"] == "urn:spine-cds:patient-pseudonym"]
        if decision["patient_pseudonym"] is None:
            assert patients == []
        else:
            assert patients == [
                {
                    "what": {"identifier": {"system": "urn:spine-cds:patient-pseudonym", "value": decision["patient_pseudonym"]}},
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "1",
                        "display": "Person",
                    },
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
                }
            ]
        kinds = details(event)
        assert ("outcome", call.outcome) in kinds and ("service", call.service) in kinds
        assert [v for k, v in kinds if k == "card-uuid"] == [c["uuid"] for c in call.cards]
        references = [r for f in (decision["assessment"] or {}).get("findings", []) for r in f["references"]]
        assert [v for k, v in kinds if k == "finding-reference"] == list(dict.fromkeys(references))
        if call.status == 200:
            model = f"{decision['model_id']}@{decision['model_version']}"
            assert ("model", model) in kinds and ("model-hash", decision["model_hash"]) in kinds
        if call.band:
            assert ("band", call.band) in kinds
        else:
            assert "band" not in dict(kinds)


# -- NDJSON ----------------------------------------------------------------------------------------


def test_ndjson_has_one_valid_audit_event_per_decision(audit_log: AuditLog) -> None:
    check_ndjson(audit_log, ndjson(audit_log), ALL)


def test_ndjson_takes_the_filters(audit_log: AuditLog) -> None:
    check_ndjson(audit_log, ndjson(audit_log, tenant=audit_log.north), NORTH)
    check_ndjson(audit_log, ndjson(audit_log, patient=audit_log.calls["likely"].patient_id), {"likely", "refused"})
    check_ndjson(audit_log, ndjson(audit_log, outcome="cards", hook="order-sign"), {"order"})
    assert ndjson(audit_log, tenant="nobody") == []


def test_the_likely_decision_names_its_findings(audit_log: AuditLog) -> None:
    event = by_decision(ndjson(audit_log), audit_log)["likely"]
    references = [v for k, v in details(event) if k == "finding-reference"]
    assert len(references) == len(set(references)) == 3 and all(r.startswith("Condition/") for r in references)


def test_a_server_error_is_a_serious_failure() -> None:
    assert [audit_outcome(s) for s in (200, 400, 404, 412, 415, 500, 503)] == ["0", "4", "4", "4", "4", "8", "8"]
    event = audit_event(
        {
            "id": 5,
            "created_at": "2026-11-24T10:00:00.123456+00:00",
            "service_id": "spine-knee-patient-view",
            "hook": None,
            "issuer": None,
            "user_id": "",
            "patient_pseudonym": None,
            "status_code": 500,
            "outcome": "internal_error",
        },
        lambda _id: None,
    )
    AuditEvent.model_validate(event)
    assert (event["outcome"], event["outcomeDesc"]) == ("8", "internal_error")
    assert "subtype" not in event and len(event["agent"]) == 2 and event["agent"][0]["requestor"] is True


def test_a_patient_user_is_exported_only_by_pseudonym() -> None:
    """A patient-facing app's userId is the patient: the export names it by the same pseudonym as the patient."""
    event = audit_event(
        {
            "id": 6,
            "created_at": "2026-11-24T10:00:00+00:00",
            "service_id": "spine-knee-patient-view",
            "hook": "patient-view",
            "issuer": "https://ehr.example.org",
            "user_id": "Patient/raw-patient-42",
            "patient_pseudonym": "ab" * 32,
            "status_code": 200,
            "outcome": "no-card",
            "card_uuids": [],
        },
        lambda patient_id: "ab" * 32 if patient_id == "raw-patient-42" else None,
    )
    AuditEvent.model_validate(event)
    assert "raw-patient-42" not in json.dumps(event)
    assert event["agent"][1]["who"] == {"identifier": {"system": "urn:spine-cds:patient-pseudonym", "value": "ab" * 32}}


# -- CSV -------------------------------------------------------------------------------------------


def test_csv_has_a_header_and_one_row_per_decision(audit_log: AuditLog) -> None:
    rows = csv_rows(audit_log)
    names = {str(c.id): c.name for c in audit_log.calls.values()}
    assert [int(r["id"]) for r in rows] == sorted(c.id for c in audit_log.calls.values())
    found = {names[r["id"]]: r for r in rows}
    assert set(found) == ALL
    for name, row in found.items():
        call = audit_log.calls[name]
        assert (row["service_id"], row["hook"], row["hook_instance"]) == (call.service, call.hook, call.hook_instance)
        assert (row["status_code"], row["outcome"], row["band"]) == (str(call.status), call.outcome, call.band or "")
        assert row["tenant"] == call.tenant
        assert row["card_count"] == str(len(call.cards))
        assert row["feedback_accepted"] == ("1" if name == "likely" else "0")
        assert row["feedback_overridden"] == ("1" if name == "order" else "0")
        assert float(row["latency_ms"]) >= 0
    assert found["likely"]["finding_signals"].split(";") == [
        "l3_l4_picture",
        "lumbar_radiculopathy",
        "low_back_pain",
        "thigh_with_back_problem",
    ]
    assert found["invalid"]["finding_signals"] == "" and found["invalid"]["patient_pseudonym"] == ""
    assert found["likely"]["patient_pseudonym"] == found["refused"]["patient_pseudonym"] != ""
    assert found["likely"]["user_id"] == "Practitioner/dr-1"
    assert found["likely"]["model_version"] and found["likely"]["model_hash"].startswith("sha256:")


def test_csv_cells_cannot_run_as_formulas(audit_log: AuditLog) -> None:
    rows = csv_rows(audit_log, user=FORMULA_USER)
    assert len(rows) == 1
    assert rows[0]["user_id"] == "'" + FORMULA_USER
    for row in csv_rows(audit_log):
        assert not any(value.startswith(("=", "+", "-", "@")) for value in row.values()), row


def test_csv_takes_the_filters(audit_log: AuditLog) -> None:
    names = {str(c.id): c.name for c in audit_log.calls.values()}
    assert {names[r["id"]] for r in csv_rows(audit_log, tenant=audit_log.north)} == NORTH
    assert {names[r["id"]] for r in csv_rows(audit_log, band="likely")} == {"likely", "order"}
    assert csv_rows(audit_log, tenant="nobody") == []


# -- on each database ------------------------------------------------------------------------------


def test_exports_alike_on_each_database(audit_log_factory: Callable[..., AuditLog], database_url: str) -> None:
    log = audit_log_factory(database_url=database_url)
    north, south = ndjson(log, tenant=log.north), ndjson(log, tenant=log.south)
    check_ndjson(log, north, NORTH)
    check_ndjson(log, south, ALL - NORTH)
    names = {str(c.id): c.name for c in log.calls.values()}
    rows = csv_rows(log, tenant=log.north) + csv_rows(log, tenant=log.south)
    assert sorted(names[r["id"]] for r in rows) == sorted(ALL)


@pytest.mark.parametrize("path", ["/export.ndjson", "/export.csv"])
def test_exports_need_an_auditor(audit_log: AuditLog, path: str) -> None:
    assert audit_log.running.client.get(API + path).status_code == 401
    assert audit_log.running.get(API + path).status_code == 401
