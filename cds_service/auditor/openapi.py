"""The OpenAPI 3.1 description of the auditor JSON API, served at /audit/api/openapi.json."""

from __future__ import annotations

from typing import Any

from cds_service.decision_log.queries import MAX_PAGE, MAX_PER_PAGE, SORTABLE, SUMMARY_COLUMNS
from cds_service.decision_log.tables import MAX_ID

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _query(name: str, description: str, example: Any, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or _STRING,
        "example": example,
    }


_DATE_OR_TIME = {"type": "string", "description": "YYYY-MM-DD (a whole day) or an ISO 8601 date-time"}

FILTER_PARAMETERS: list[dict[str, Any]] = [
    _query("from", "Decisions at or after this day (00:00 UTC) or instant.", "2026-01-01", _DATE_OR_TIME),
    _query("to", "Decisions before the end of this day (UTC), or before this instant.", "2026-12-31", _DATE_OR_TIME),
    _query("service", "The CDS service id.", "spine-knee-patient-view"),
    _query("hook", "The hook, e.g. patient-view or order-sign.", "patient-view"),
    _query("band", "The assessment band (likely, possible, unlikely).", "likely"),
    _query("outcome", "The logged outcome: cards, no-card, snoozed, or an error code such as invalid_request.", "cards"),
    _query(
        "reason",
        "Why the call got its cards or none: red-flag, spinal-origin-likely, spinal-origin-possible, not-eligible, "
        "in-spine-care, no-spinal-evidence, not-knee-directed, no-knee-problem-added, not-a-clinician, snoozed, "
        "or a failed call's error code.",
        "in-spine-care",
    ),
    _query("user", "The EHR user (context.userId), e.g. Practitioner/123.", "Practitioner/dr-1"),
    _query("tenant", "The tenant claim of the EHR's JWT.", "north-clinic"),
    _query(
        "patient",
        "A patient id as the EHR knows it. The server matches it by its pseudonym; the id itself is neither "
        "stored nor written to the access log.",
        "example-patient-id",
    ),
]
ACCESS_PARAMETERS: list[dict[str, Any]] = [
    _query("auditor", "The auditor (or cli:<user> for account changes) whose accesses to list.", "auditor-1"),
    _query("action", "One kind of access, e.g. page.view, api.search, api.export.csv, users.disable.", "page.view"),
    _query("decision", "The accesses that opened this decision.", 1, {"type": "integer", "minimum": 1, "maximum": MAX_ID}),
]
PAGE_PARAMETERS: list[dict[str, Any]] = [
    _query(
        "sort",
        "The column to sort by, prefixed with '-' for descending order.",
        "-created_at",
        {"type": "string", "enum": sorted(SORTABLE | {f"-{c}" for c in SORTABLE}), "default": "-created_at"},
    ),
    _query("page", "The page, from 1.", 1, {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}),
    _query("per_page", "Entries per page.", 50, {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": 50}),
]

_SUMMARY_TYPES: dict[str, dict[str, Any]] = {
    "id": {"type": "integer"},
    "created_at": {"type": "string", "format": "date-time"},
    "status_code": {"type": "integer"},
    "latency_ms": {"type": "number"},
    "service_id": _STRING,
    "outcome": _STRING,
}
_FEEDBACK = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "card_uuid": _STRING,
        "outcome": {"type": "string", "enum": ["accepted", "overridden"]},
        "outcome_timestamp": _STRING,
        "accepted_suggestions": {"type": "array", "items": _STRING},
        "override_code": _NULLABLE_STRING,
        "override_system": _NULLABLE_STRING,
        "override_comment": _NULLABLE_STRING,
        "issuer": _NULLABLE_STRING,
        "tenant": _NULLABLE_STRING,
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


_UNAUTHORIZED = {
    "description": "No auditor session and no valid Basic credentials (an EHR's Bearer token is never accepted).",
    "headers": {"WWW-Authenticate": {"schema": _STRING, "description": 'Basic realm="spine-cds audit"'}},
    "content": {"application/json": {"schema": _ref("Error")}},
}


_TOO_MANY_ATTEMPTS = {
    "description": "Too many failed logins for this account or from this address; no password is checked until the lockout ends.",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds until the lockout ends."}},
    "content": {"application/json": {"schema": _ref("Error")}},
}


def document() -> dict[str, Any]:
    summary = {
        "type": "object",
        "properties": {c: _SUMMARY_TYPES.get(c, _NULLABLE_STRING) for c in SUMMARY_COLUMNS},
        "required": list(SUMMARY_COLUMNS),
    }
    filters = [{"$ref": f"#/components/parameters/{p['name']}"} for p in FILTER_PARAMETERS]
    paging = [{"$ref": f"#/components/parameters/{p['name']}"} for p in PAGE_PARAMETERS]
    access_filters = [
        {"$ref": f"#/components/parameters/{name}"} for name in ("from", "to", "auditor", "action", "decision", "patient")
    ]
    common = {"400": _error("A query parameter is unknown or invalid."), "401": _UNAUTHORIZED, "429": _TOO_MANY_ATTEMPTS}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spine-cds auditor API",
            "version": "1.0.0",
            "description": "Read-only access to the decision log for auditors. Every search, view, statistics "
            "request and export is itself written to the (hash-chained) access log.",
        },
        "security": [{"basicAuth": []}, {"sessionCookie": []}],
        "paths": {
            "/audit/api/decisions": {
                "get": {
                    "operationId": "listDecisions",
                    "summary": "Search decisions",
                    "parameters": filters + paging,
                    "responses": {
                        "200": {
                            "description": "One page of matching decisions; `next` and `prev` (also in the Link header) "
                            "are present when there is such a page.",
                            "headers": {"Link": {"schema": _STRING, "description": 'RFC 8288 links, rel="next" and rel="prev"'}},
                            "content": {"application/json": {"schema": _ref("DecisionPage")}},
                        },
                        **common,
                    },
                }
            },
            "/audit/api/decisions/{decision_id}": {
                "get": {
                    "operationId": "getDecision",
                    "summary": "One decision in full",
                    "parameters": [
                        {
                            "name": "decision_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The decision with its cards as shown (the patient reference masked), "
                            "assessment findings, model identity and the feedback received.",
                            "content": {"application/json": {"schema": _ref("Decision")}},
                        },
                        "401": _UNAUTHORIZED,
                        "429": _TOO_MANY_ATTEMPTS,
                        "404": _error("No decision with this id."),
                    },
                }
            },
            "/audit/api/stats": {
                "get": {
                    "operationId": "decisionStats",
                    "summary": "Statistics over the matching decisions",
                    "parameters": filters,
                    "responses": {
                        "200": {"description": "Counts and rates.", "content": {"application/json": {"schema": _ref("Stats")}}},
                        **common,
                    },
                }
            },
            "/audit/api/export.ndjson": {
                "get": {
                    "operationId": "exportAuditEvents",
                    "summary": "The matching decisions as FHIR R4 AuditEvent resources (IHE BALP), one per line",
                    "parameters": filters,
                    "responses": {
                        "200": {
                            "description": "Newline-delimited JSON, oldest decision first.",
                            "content": {"application/fhir+ndjson": {"schema": _STRING}},
                        },
                        **common,
                    },
                }
            },
            "/audit/api/export.csv": {
                "get": {
                    "operationId": "exportCsv",
                    "summary": "The matching decisions as CSV, one row each",
                    "parameters": filters,
                    "responses": {
                        "200": {
                            "description": "A header row, then one row per decision (oldest first): the summary columns, "
                            "model_id, model_hash, card_count, finding_signals (';'-separated), feedback_accepted, "
                            "feedback_overridden, reuse_of. Cells starting with = + - @ are prefixed with a single quote.",
                            "content": {"text/csv": {"schema": _STRING}},
                        },
                        **common,
                    },
                }
            },
            "/audit/api/decisions/{decision_id}/proof": {
                "get": {
                    "operationId": "decisionProof",
                    "summary": "The decision's inclusion proof under the newest signed checkpoint (c2sp.org/tlog-proof)",
                    "description": "Verifiable offline with the log's verifier key only: `spine-cds audit verify-proof`, "
                    "or the script in docs/audit-log.md.",
                    "parameters": [
                        {"name": "decision_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
                    ],
                    "responses": {
                        "200": {"description": "The proof file.", "content": {"text/plain": {"schema": _STRING}}},
                        "404": _error("No such decision, or it is not under a signed checkpoint yet."),
                        "401": _UNAUTHORIZED,
                        "429": _TOO_MANY_ATTEMPTS,
                    },
                }
            },
            "/audit/api/decisions/{decision_id}/feedback/{feedback_id}/proof": {
                "get": {
                    "operationId": "feedbackProof",
                    "summary": "A feedback item's inclusion proof under the newest signed checkpoint (c2sp.org/tlog-proof)",
                    "description": "What the clinician did with the decision's card, provable like the decision itself.",
                    "parameters": [
                        {"name": "decision_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
                        {"name": "feedback_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
                    ],
                    "responses": {
                        "200": {"description": "The proof file.", "content": {"text/plain": {"schema": _STRING}}},
                        "404": _error("No such feedback item on this decision, or it is not under a signed checkpoint yet."),
                        "401": _UNAUTHORIZED,
                        "429": _TOO_MANY_ATTEMPTS,
                    },
                }
            },
            "/audit/api/checkpoints": {
                "get": {
                    "operationId": "listCheckpoints",
                    "summary": "The Merkle tree's signed checkpoints (C2SP signed notes), newest first, and the verifier key",
                    "responses": {
                        "200": {"description": "`verifier_key` and `items` (size, created_at, root_hash, note).", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "401": _UNAUTHORIZED,
                        "429": _TOO_MANY_ATTEMPTS,
                    },
                }
            },
            "/audit/api/consistency": {
                "get": {
                    "operationId": "consistencyProof",
                    "summary": "The proof that the log only grew from the checkpoint of `from` entries to the newest (RFC 9162 2.1.4)",
                    "parameters": [_query("from", "The tree size of a signed checkpoint you kept.", 1, {"type": "integer", "minimum": 1})],
                    "responses": {
                        "200": {"description": "`old` and `new` signed notes and `proof` (hex hashes).", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "400": _error("`from` is missing or not a whole number."),
                        "404": _error("No signed checkpoint of that size."),
                        "401": _UNAUTHORIZED,
                        "429": _TOO_MANY_ATTEMPTS,
                    },
                }
            },
            "/audit/api/governance": {
                "get": {
                    "operationId": "governance",
                    "summary": "Alert governance per site (issuer, tenant), hook and model version",
                    "description": "Calls, eligible calls (answered and assessed), cards and cards per 100 eligible calls, "
                    "accepted and overridden (each also per 100 cards), overrides by reason and by HL7 non-adherence category, snoozed, the weekly trend, and "
                    "`warning` when the card fires on more than GOVERNANCE_WARNING_SHARE of the eligible calls.",
                    "parameters": filters,
                    "responses": {
                        "200": {"description": "The groups, most calls first.", "content": {"application/json": {"schema": {"type": "object"}}}},
                        **common,
                    },
                }
            },
            "/audit/api/governance.csv": {
                "get": {
                    "operationId": "governanceCsv",
                    "summary": "The alert governance figures as CSV, one row per group",
                    "parameters": filters,
                    "responses": {"200": {"description": "A header row, then one row per group.", "content": {"text/csv": {"schema": _STRING}}}, **common},
                }
            },
            "/audit/api/access": {
                "get": {
                    "operationId": "listAccess",
                    "summary": "Search the access log: who searched, opened or exported what, and account changes",
                    "description": "Newest first. `patient` finds the searches that named the patient and the openings "
                    "of that patient's decisions. This search is itself logged.",
                    "parameters": access_filters + paging[1:],
                    "responses": {
                        "200": {
                            "description": "One page of access-log entries; `next` when there is a further page.",
                            "content": {"application/json": {"schema": _ref("AccessPage")}},
                        },
                        **common,
                    },
                }
            },
            "/audit/api/access/export.ndjson": {
                "get": {
                    "operationId": "exportAccess",
                    "summary": "The matching access-log entries as FHIR R4 AuditEvents, one per line (oldest first)",
                    "parameters": access_filters,
                    "responses": {
                        "200": {
                            "description": "NDJSON of AuditEvent resources: the auditor as the requesting agent, the "
                            "decision opened or the search's filters as entities.",
                            "content": {"application/fhir+ndjson": {"schema": _STRING}},
                        },
                        **common,
                    },
                }
            },
            "/audit/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic", "description": "An auditor account's credentials."},
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "The session of an auditor logged in at /audit/login.",
                },
            },
            "parameters": {p["name"]: p for p in FILTER_PARAMETERS + ACCESS_PARAMETERS + PAGE_PARAMETERS},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "examples": ["invalid_filter", "not_found", "login_required", "too_many_attempts"],
                                },
                                "message": _STRING,
                                "details": {"type": "object"},
                            },
                        }
                    },
                },
                "DecisionSummary": summary,
                "AccessEntry": {
                    "type": "object",
                    "required": ["id", "created_at", "username", "action", "details"],
                    "properties": {
                        "id": {"type": "integer"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "username": _STRING,
                        "action": _STRING,
                        "details": {"type": "object", "description": "The filters (a patient only as its pseudonym) or the decision opened."},
                    },
                },
                "AccessPage": {
                    "type": "object",
                    "required": ["items", "total", "page", "per_page"],
                    "properties": {
                        "items": {"type": "array", "items": _ref("AccessEntry")},
                        "total": {"type": "integer"},
                        "page": {"type": "integer"},
                        "per_page": {"type": "integer"},
                        "next": {"type": "string", "format": "uri"},
                    },
                },
                "DecisionPage": {
                    "type": "object",
                    "required": ["items", "total", "page", "per_page"],
                    "properties": {
                        "items": {"type": "array", "items": _ref("DecisionSummary")},
                        "total": {"type": "integer"},
                        "page": {"type": "integer"},
                        "per_page": {"type": "integer"},
                        "next": {"type": "string", "format": "uri"},
                        "prev": {"type": "string", "format": "uri"},
                    },
                },
                "Decision": {
                    "allOf": [
                        _ref("DecisionSummary"),
                        {
                            "type": "object",
                            "properties": {
                                "model_id": _NULLABLE_STRING,
                                "model_hash": _NULLABLE_STRING,
                                "card_uuids": {"type": "array", "items": _STRING},
                                "suggestion_uuids": {"type": "array", "items": _STRING},
                                "cards": {"type": "array", "items": {"type": "object"}},
                                "assessment": {"type": ["object", "null"]},
                                "input_digest": _NULLABLE_STRING,
                                "reuse_of": {
                                    "type": ["integer", "null"],
                                    "description": "The earlier decision that answered this hookInstance for another "
                                    "request or caller; this call was answered afresh.",
                                },
                                "feedback": {"type": "array", "items": _FEEDBACK},
                            },
                        },
                    ]
                },
                "Stats": {
                    "type": "object",
                    "properties": {
                        "decisions": {"type": "integer"},
                        "cards_shown": {"type": "integer"},
                        "accepted": {"type": "integer"},
                        "overridden": {"type": "integer"},
                        "acceptance_rate": {"type": ["number", "null"]},
                        "override_rate": {"type": ["number", "null"]},
                        "override_reasons": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "bands": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "outcomes": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "latency_ms": {
                            "type": "object",
                            "properties": {p: {"type": ["number", "null"]} for p in ("p50", "p90", "p99")},
                        },
                        "per_day": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
    }
