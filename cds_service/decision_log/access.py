"""The access log as auditors read it: who searched, opened or exported what, and which account changed.

Searchable by auditor, by decision, by patient (its pseudonym: the searches that named it and the decisions of
that patient that were opened) and by time; exported as FHIR R4 AuditEvents like the decisions are."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, String, and_, cast, func, or_, select
from sqlalchemy.engine import Engine

from cds_service.decision_log.export import DCM, DECISION_SYSTEM, ENTITY_TYPE, OBSERVER, PATIENT_SYSTEM, SOURCE_TYPE
from cds_service.decision_log.queries import MAX_PAGE, MAX_PER_PAGE, Page, day_or_time, filter_text
from cds_service.decision_log.tables import MAX_ID, AccessRecord, Decision
from cds_service.errors import ApiError

AUDITOR_SYSTEM = "urn:spine-cds:auditor"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
# what each kind of access was, as an AuditEvent (action code and FHIR restful interaction)
_INTERACTIONS = {"search": ("E", "search-type"), "view": ("R", "read"), "stats": ("E", "search-type"), "export": ("E", "search-type")}
ACCESS_COLUMNS = ("id", "created_at", "username", "action", "details")


@dataclass(frozen=True)
class AccessFilters:
    start: datetime | None = None
    end: datetime | None = None  # exclusive
    auditor: str | None = None
    action: str | None = None
    decision: int | None = None
    patient_pseudonym: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str], pseudonym: Callable[[str], str | None]) -> AccessFilters:
        """From query parameters: from, to, auditor, action, decision (an id), patient (an id, matched by pseudonym)."""
        known = {"from", "to", "auditor", "action", "decision", "patient", "page", "per_page"}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ApiError(400, "invalid_filter", f"Unknown parameter(s): {', '.join(unknown)}.")
        decision = filter_text(args, "decision")
        if decision is not None and not (decision.isdigit() and 1 <= int(decision) <= MAX_ID):
            raise ApiError(400, "invalid_filter", "'decision' must be a decision id (a whole number from 1).")
        patient = filter_text(args, "patient")
        return cls(
            start=day_or_time(args["from"], "from", end=False) if filter_text(args, "from") else None,
            end=day_or_time(args["to"], "to", end=True) if filter_text(args, "to") else None,
            auditor=filter_text(args, "auditor"),
            action=filter_text(args, "action"),
            decision=int(decision) if decision is not None else None,
            patient_pseudonym=pseudonym(patient) if patient else None,
        )

    def conditions(self, dialect: str) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.start:
            found.append(AccessRecord.created_at >= self.start)
        if self.end:
            found.append(AccessRecord.created_at < self.end)
        if self.auditor:
            found.append(AccessRecord.username == self.auditor)
        if self.action:
            found.append(AccessRecord.action == self.action)
        if self.decision is not None:
            found.append(_opened(self.decision, dialect))
        if self.patient_pseudonym:
            # SQLite's json_extract keeps a JSON string's type: compared as text on both databases
            named = AccessRecord.details["patient_pseudonym"].as_string() == self.patient_pseudonym
            ids = cast(Decision.id, String) if dialect == "postgresql" else Decision.id  # in _decision_id's kind
            theirs = select(ids).where(Decision.patient_pseudonym == self.patient_pseudonym).scalar_subquery()
            found.append(or_(named, _decision_id(dialect).in_(theirs)))
        return found

    def to_log(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v is not None}


def _decision_id(dialect: str) -> ColumnElement[Any]:
    """The decision an access opened: `decision_id` of a page view, `id` of an API view."""
    keys = (AccessRecord.details["decision_id"], AccessRecord.details["id"])
    # PostgreSQL's ->> is text and SQLite's json_extract an integer: each compared in its own kind
    values = [k.as_string() for k in keys] if dialect == "postgresql" else [k.as_integer() for k in keys]
    return func.coalesce(*values)


def _opened(decision_id: int, dialect: str) -> ColumnElement[bool]:
    value: Any = str(decision_id) if dialect == "postgresql" else decision_id
    return and_(AccessRecord.action.in_(("page.view", "api.view")), _decision_id(dialect) == value)


def _where(query: Select[Any], filters: AccessFilters, engine: Engine) -> Select[Any]:
    conditions = filters.conditions(engine.dialect.name)
    return query.where(*conditions) if conditions else query


def _row(row: Mapping[Any, Any]) -> dict[str, Any]:
    out = dict(row)
    out["created_at"] = out["created_at"].isoformat() if isinstance(out["created_at"], datetime) else out["created_at"]
    return out


def list_access(engine: Engine, filters: AccessFilters, *, page: int = 1, per_page: int = 50) -> Page:
    """The matching access-log entries, newest first."""
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= MAX_PER_PAGE:
        raise ApiError(400, "invalid_page", f"'page' is between 1 and {MAX_PAGE}; 'per_page' is between 1 and {MAX_PER_PAGE}.")
    columns = [getattr(AccessRecord, c) for c in ACCESS_COLUMNS]
    with engine.connect() as connection:
        total = connection.execute(_where(select(func.count(AccessRecord.id)), filters, engine)).scalar_one()
        query = _where(select(*columns), filters, engine).order_by(AccessRecord.id.desc())
        rows = connection.execute(query.limit(per_page).offset((page - 1) * per_page))
        items = [_row(r._mapping) for r in rows]
    return Page(items, int(total), page, per_page)


def iter_access(engine: Engine, filters: AccessFilters, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every matching entry, oldest first, read in batches (for the export)."""
    last = 0
    columns = [getattr(AccessRecord, c) for c in ACCESS_COLUMNS]
    while True:
        with engine.connect() as connection:
            query = _where(select(*columns), filters, engine).where(AccessRecord.id > last).order_by(AccessRecord.id)
            rows = connection.execute(query.limit(batch)).all()
        if not rows:
            return
        for row in rows:
            yield _row(row._mapping)
        last = rows[-1].id


def access_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """One access-log entry as a FHIR R4 AuditEvent: the auditor as the requesting agent, the decision opened
    or the search's filters as entities."""
    action = str(record["action"])
    kind = next((k for k in _INTERACTIONS if k in action.split(".")), None)
    code, interaction = _INTERACTIONS.get(kind or "", ("E", "search-type"))
    details = record.get("details") or {}
    entities: list[dict[str, Any]] = []
    opened = details.get("decision_id", details.get("id")) if action in ("page.view", "api.view") else None
    if opened is not None:
        entities.append(
            {
                "what": {"identifier": {"system": DECISION_SYSTEM, "value": str(opened)}},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            }
        )
    if details.get("patient_pseudonym"):
        entities.append(
            {
                "what": {"identifier": {"system": PATIENT_SYSTEM, "value": details["patient_pseudonym"]}},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            }
        )
    if opened is None and details:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "name": action,
                "detail": [{"type": str(k), "valueString": _text(v)} for k, v in sorted(details.items())],
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": f"access-{record['id']}",
        "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": interaction}],
        "action": code,
        "recorded": record["created_at"],
        "outcome": "0",
        "outcomeDesc": action,
        "agent": [{"who": {"identifier": {"system": AUDITOR_SYSTEM, "value": str(record["username"])}}, "requestor": True}],
        "source": {"observer": {"display": OBSERVER}, "type": [SOURCE_TYPE]},
        "entity": entities,
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def access_ndjson(engine: Engine, filters: AccessFilters) -> Iterator[bytes]:
    for record in iter_access(engine, filters):
        yield orjson.dumps(access_event(record)) + b"\n"
