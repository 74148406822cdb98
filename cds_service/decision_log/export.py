"""Exports of the decision log: FHIR R4 AuditEvents (NDJSON) and a CSV summary, streamed in batches.

Each decision becomes one AuditEvent following the IHE Basic Audit Log Patterns (BALP) where they fit
a CDS Hooks call: a RESTful operation executed by the EHR client (BALP "client", Source Role ID) on
this service (BALP "server", Destination Role ID) for a clinician (BALP "user", the information
recipient and the requestor), about one patient. The patient is named only by the log's pseudonym;
neither a raw patient id nor a token is ever stored, so neither can be exported.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from cds_service.decision_log.queries import SUMMARY_COLUMNS, DecisionFilters, feedback_for, iter_decisions
from cds_service.spreadsheet import safe_cell

DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}
SOURCE_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
    "code": "4",
    "display": "Application Server",
}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

HOOK_SYSTEM = "urn:spine-cds:hook"
ISSUER_SYSTEM = "urn:spine-cds:issuer"
SERVICE_SYSTEM = "urn:spine-cds:service"
USER_SYSTEM = "urn:spine-cds:user"
PATIENT_SYSTEM = "urn:spine-cds:patient-pseudonym"
DECISION_SYSTEM = "urn:spine-cds:decision"
OBSERVER = "spine-cds"

# a user that is a clinician is exported as a reference; any other value only as an identifier
_CLINICIAN_REFERENCE = re.compile(r"(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}")
_PATIENT_REFERENCE = re.compile(r"Patient/(.+)")

CSV_COLUMNS = (
    *SUMMARY_COLUMNS,
    "model_id",
    "model_hash",
    "card_count",
    "finding_signals",
    "feedback_accepted",
    "feedback_overridden",
    "reuse_of",
)

Pseudonym = Callable[[str], str | None]


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def audit_outcome(status_code: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (the caller's error), 8 serious failure (ours)."""
    if status_code < 400:
        return "0"
    return "4" if status_code < 500 else "8"


def _findings(decision: dict[str, Any]) -> list[dict[str, Any]]:
    assessment = decision.get("assessment") or {}
    findings = assessment.get("findings") if isinstance(assessment, dict) else None
    return [f for f in findings or [] if isinstance(f, dict)]


def _user_agent(user_id: str, pseudonym: Pseudonym) -> dict[str, Any]:
    who: dict[str, Any]
    patient = _PATIENT_REFERENCE.fullmatch(user_id)
    if _CLINICIAN_REFERENCE.fullmatch(user_id):
        who = {"reference": user_id}
    elif patient:
        # a patient-facing app: the user is the patient, exported only under the pseudonym
        who = {"identifier": {"system": PATIENT_SYSTEM, "value": pseudonym(patient.group(1)) or "unknown"}}
    else:
        who = {"identifier": {"system": USER_SYSTEM, "value": user_id}}
    return {
        "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
        "who": who,
        "requestor": True,
    }


def audit_event(decision: dict[str, Any], pseudonym: Pseudonym) -> dict[str, Any]:
    """One logged decision (as iter_decisions gives it) as a FHIR R4 AuditEvent."""
    decision_id = int(decision["id"])
    user_id = decision.get("user_id") or None
    issuer = decision.get("issuer") or None
    service_id = str(decision["service_id"])

    client: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
        # with no known user the EHR client itself initiated the call
        "requestor": user_id is None,
    }
    if issuer:
        client["who"] = {"identifier": {"system": ISSUER_SYSTEM, "value": issuer}, "display": "EHR client"}
    else:
        client["who"] = {"display": "EHR client (issuer unknown)"}
    server = {
        "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
        "who": {"identifier": {"system": SERVICE_SYSTEM, "value": service_id}, "display": service_id},
        "requestor": False,
    }
    agents = [client, server]
    if user_id:
        agents.insert(1, _user_agent(str(user_id), pseudonym))

    details: list[tuple[str, Any]] = [
        ("service", service_id),
        ("hook-instance", decision.get("hook_instance")),
        ("reuse-of-decision", decision.get("reuse_of")),
        ("tenant", decision.get("tenant")),
        ("outcome", decision.get("outcome")),
        ("reason", decision.get("reason")),
        ("status-code", decision.get("status_code")),
    ]
    if decision.get("model_id"):
        details.append(("model", f"{decision['model_id']}@{decision.get('model_version') or 'unknown'}"))
    details += [("model-hash", decision.get("model_hash")), ("band", decision.get("band"))]
    details += [("card-uuid", uuid) for uuid in decision.get("card_uuids") or []]
    details += [("suggestion-uuid", uuid) for uuid in decision.get("suggestion_uuids") or []]
    # a record entry behind several findings (an interaction and its parts) is named once
    references = dict.fromkeys(r for finding in _findings(decision) for r in finding.get("references") or [])
    details += [("finding-reference", reference) for reference in references]
    details += [("input-digest", decision.get("input_digest")), ("latency-ms", decision.get("latency_ms"))]

    entities: list[dict[str, Any]] = []
    if decision.get("patient_pseudonym"):
        entities.append(
            {
                "what": {"identifier": {"system": PATIENT_SYSTEM, "value": decision["patient_pseudonym"]}},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    entities.append(
        {
            "what": {"identifier": {"system": DECISION_SYSTEM, "value": str(decision_id)}},
            "type": _coding(ENTITY_TYPE, "2", "System Object"),
            "name": f"CDS Hooks decision {decision_id}",
            "detail": [{"type": kind, "valueString": str(value)} for kind, value in details if value not in (None, "")],
        }
    )

    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"decision-{decision_id}",
        "type": EVENT_TYPE,
        "action": "E",
        "recorded": decision["created_at"],
        "outcome": audit_outcome(int(decision["status_code"])),
        "outcomeDesc": str(decision["outcome"]),
        "agent": agents,
        "source": {"observer": {"display": OBSERVER}, "type": [SOURCE_TYPE]},
        "entity": entities,
    }
    if decision.get("hook"):
        event["subtype"] = [{"system": HOOK_SYSTEM, "code": decision["hook"]}]
    return event


def decisions_with_feedback(
    engine: Engine, filters: DecisionFilters, batch: int = 500
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every matching decision, oldest first, with its feedback (looked up a batch at a time)."""
    decisions = iter_decisions(engine, filters, batch=batch)
    while chunk := list(islice(decisions, batch)):
        feedback = feedback_for(engine, [d["id"] for d in chunk])
        for decision in chunk:
            yield decision, feedback[decision["id"]]


def ndjson_lines(engine: Engine, filters: DecisionFilters, pseudonym: Pseudonym) -> Iterator[bytes]:
    for decision in iter_decisions(engine, filters):
        yield orjson.dumps(audit_event(decision, pseudonym)) + b"\n"


def csv_row(decision: dict[str, Any], feedback: list[dict[str, Any]]) -> list[Any]:
    signals = ";".join(str(f.get("signal")) for f in _findings(decision) if f.get("signal"))
    values = [decision.get(c) for c in SUMMARY_COLUMNS] + [
        decision.get("model_id"),
        decision.get("model_hash"),
        len(decision.get("card_uuids") or []),
        signals,
        sum(1 for f in feedback if f["outcome"] == "accepted"),
        sum(1 for f in feedback if f["outcome"] == "overridden"),
        decision.get("reuse_of"),
    ]
    return [safe_cell("" if v is None else v) for v in values]


def csv_lines(engine: Engine, filters: DecisionFilters) -> Iterator[str]:
    """The CSV text, a header then one row per decision, each yielded as written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for decision, feedback in decisions_with_feedback(engine, filters):
        writer.writerow(csv_row(decision, feedback))
        yield flush()
