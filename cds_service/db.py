"""The decision log: one row per hook call and per feedback item, written before the response.

Patient ids are stored only as keyed HMAC pseudonyms; tokens and raw prefetch are never stored
(a digest of the inputs is). Every row is linked into the hash chain (cds_service.audit.chain) in the
transaction that writes it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import psycopg
from sqlalchemy import JSON, Insert, Integer, Select, String, any_, bindparam, exists, func, insert, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql.elements import ClauseElement

from cds_service.audit import chain
from cds_service.models import (
    AccessRecord,
    Base,
    Checkpoint,
    Decision,
    Feedback,
    IssuedCard,
    LogEntry,
    User,
    Verification,
    json_text,
    make_engine,
    upgrade,
    utcnow,
)

__all__ = [
    "AccessRecord",
    "Base",
    "Checkpoint",
    "Decision",
    "DecisionLog",
    "Feedback",
    "IssuedCard",
    "LogEntry",
    "SnoozeRule",
    "User",
    "Verification",
    "make_engine",
    "upgrade",
]


@dataclass(frozen=True)
class SnoozeRule:
    """Overrides with these reasons, this recent, silence a service's cards for that patient."""

    system: str
    codes: frozenset[str]
    days: int


_DECISION_COLUMNS = tuple(c for c in Decision.__table__.columns if c.key != "id")
_INSERT_DECISION = insert(Decision).returning(Decision.id)
_INSERT_LOG_ENTRY = insert(LogEntry)


@cache  # built once per shape, so SQLAlchemy's compiled cache is hit on every later call
def _state_query(snooze: bool, postgres: bool) -> Select[Any]:
    """One row read under the chain lock: the chain head, on PostgreSQL the new decision's id (so the
    decision, its cards and its link go in one statement), and whether an override snoozes the cards."""
    columns: list[Any] = [chain.HEAD.c.seq, chain.HEAD.c.entry_hash]
    if postgres:
        columns.append(
            select(func.nextval(func.pg_get_serial_sequence("decisions", "id"))).scalar_subquery().label("decision_id")
        )
    if snooze:
        codes = (
            Feedback.override_code == any_(bindparam("snooze_codes", type_=postgresql.ARRAY(String)))
            if postgres
            else Feedback.override_code.in_(bindparam("snooze_codes", expanding=True))
        )
        recent_override = select(Feedback.id).where(
            Feedback.service_id == bindparam("service_id", type_=String),
            Feedback.patient_pseudonym == bindparam("patient_pseudonym", type_=String),
            Feedback.outcome == "overridden",
            codes,
            or_(Feedback.override_system == bindparam("snooze_system", type_=String), Feedback.override_system.is_(None)),
            Feedback.created_at >= bindparam("snooze_since", type_=Feedback.created_at.type),
        )
        columns.append(exists(recent_override).label("snoozed"))
    return select(*columns)


def _postgres_insert() -> Insert:
    """The decision, its issued cards and its chain link as one statement (data-modifying CTEs)."""
    decision = insert(Decision).values(
        id=bindparam("id", type_=Integer), **{c.key: bindparam(c.key, type_=c.type) for c in _DECISION_COLUMNS}
    )
    card_uuids = func.unnest(bindparam("card_list", type_=postgresql.ARRAY(String)))
    cards = insert(IssuedCard).from_select(["card_uuid", "decision_id"], select(card_uuids, bindparam("id", type_=Integer)))
    link = {c.key: bindparam(f"link_{c.key}", type_=c.type) for c in LogEntry.__table__.columns}
    return insert(LogEntry).values(link).add_cte(decision.cte("new_decision"), cards.cte("new_cards"))


_JSON_COLUMNS = frozenset(c.key for c in _DECISION_COLUMNS if isinstance(c.type, JSON))


@dataclass(frozen=True)
class _DriverStatement:
    """A statement compiled once to the driver's SQL, with the values of its constant parameters."""

    sql: str
    constants: dict[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> _DriverStatement:
        compiled = statement.compile(dialect=dialect)
        # named parameters have no value here: left out, so a call that forgets one fails loudly
        return cls(str(compiled), {k: v for k, v in compiled.params.items() if v is not None})

    def execute(self, cursor: Any, parameters: dict[str, Any]) -> None:
        cursor.execute(self.sql, {**self.constants, **parameters})


class _PostgresAppend:
    """A hook call's append on PostgreSQL through the driver's cursor, with statements SQLAlchemy compiled
    once: its per-execution work was the larger part of the append's CPU (bench/README.md)."""

    def __init__(self, dialect: Dialect) -> None:
        self.lock = _DriverStatement.of(chain.POSTGRES_LOCK, dialect)
        self.state = {snooze: _DriverStatement.of(_state_query(snooze, True), dialect) for snooze in (False, True)}
        self.insert = _DriverStatement.of(_postgres_insert(), dialect)


class DecisionLog:
    def __init__(self, engine: Engine, pseudonym_key: bytes, audit_key: bytes) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._key = pseudonym_key
        self.audit_key = audit_key
        postgres = engine.dialect.name == "postgresql"
        self._postgres_statements = _PostgresAppend(engine.dialect) if postgres else None

    def pseudonym(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def append(self, decision: Decision, snooze: SnoozeRule | None = None) -> Decision:
        """Commit the decision and its chain link, or return the answer already logged for this call.

        A successful decision is idempotent on (service, hookInstance): a retry gets the first answer,
        enforced by a unique index over the answered calls, so two identical calls racing each other
        still log one decision. Failed attempts (400, 412) are logged too but answer nothing, so a retry
        after one is assessed. With a snooze rule, a decision with cards is checked against recent
        overrides for the same patient and logged as "snoozed" without cards when one applies.
        On PostgreSQL an append is four round trips: the lock, one read, one insert, the commit.
        """
        values = {c.key: getattr(decision, c.key) for c in _DECISION_COLUMNS}
        values["created_at"] = values["created_at"] or utcnow()
        check_snooze = bool(snooze and decision.cards and decision.patient_pseudonym and snooze.days > 0)
        parameters: dict[str, Any] = {}
        if snooze and check_snooze:
            parameters = {
                "service_id": decision.service_id,
                "patient_pseudonym": decision.patient_pseudonym,
                "snooze_codes": sorted(snooze.codes),
                "snooze_system": snooze.system,
                "snooze_since": utcnow() - timedelta(days=snooze.days),
            }
        append = self._append_postgres if self._postgres_statements else self._append
        try:
            decision_id = append(values, check_snooze, parameters)
        except (IntegrityError, psycopg.IntegrityError):
            # this call was already answered (or is being answered by an identical call a moment earlier)
            with self.engine.connect() as connection:
                earlier = self._answered(connection, decision)
            if earlier is None:
                raise
            return earlier
        for key in ("cards", "card_uuids", "suggestion_uuids", "outcome", "created_at"):
            setattr(decision, key, values[key])
        decision.id = decision_id
        return decision

    def _append(self, values: dict[str, Any], check_snooze: bool, parameters: dict[str, Any]) -> int:
        with self.engine.begin() as connection:
            chain.lock(connection)
            state = connection.execute(_state_query(check_snooze, False), parameters).one()
            if check_snooze and state.snoozed:
                values.update(cards=[], card_uuids=[], suggestion_uuids=[], outcome="snoozed")
            decision_id: int = connection.execute(_INSERT_DECISION, values).scalar_one()
            link = chain.entry(
                self.audit_key, "decision", decision_id, {"id": decision_id, **values}, state.seq, state.entry_hash
            )
            if values["card_uuids"]:
                connection.execute(
                    insert(IssuedCard), [{"card_uuid": u, "decision_id": decision_id} for u in values["card_uuids"]]
                )
            connection.execute(_INSERT_LOG_ENTRY, link)
        return decision_id

    def _append_postgres(self, values: dict[str, Any], check_snooze: bool, parameters: dict[str, Any]) -> int:
        statements = self._postgres_statements
        assert statements is not None
        with self.engine.begin() as connection:
            cursor = connection.connection.cursor()
            try:
                statements.lock.execute(cursor, {})
                statements.state[check_snooze].execute(cursor, parameters)
                state = cursor.fetchone()
                assert state is not None  # the head query always answers one row
                seq, prev, decision_id, *snoozed = state
                if snoozed and snoozed[0]:
                    values.update(cards=[], card_uuids=[], suggestion_uuids=[], outcome="snoozed")
                link = chain.entry(self.audit_key, "decision", decision_id, {"id": decision_id, **values}, seq, prev)
                row = {k: json_text(v) if k in _JSON_COLUMNS else v for k, v in values.items()}
                links = {f"link_{k}": v for k, v in link.items()}
                statements.insert.execute(cursor, {"id": decision_id, "card_list": values["card_uuids"], **row, **links})
            finally:
                cursor.close()
        return int(decision_id)

    @staticmethod
    def _answered(connection: Connection, decision: Decision) -> Decision | None:
        if decision.status_code != 200 or decision.hook_instance is None:
            return None
        query = select(Decision).where(
            Decision.service_id == decision.service_id,
            Decision.hook_instance == decision.hook_instance,
            Decision.status_code == 200,
        )
        row = connection.execute(query.order_by(Decision.id).limit(1)).first()
        return _decision(row._mapping) if row is not None else None

    def decision_for_card(self, service_id: str, card_uuid: str) -> Decision | None:
        with self.sessions() as session:
            return session.scalar(
                select(Decision)
                .join(IssuedCard, IssuedCard.decision_id == Decision.id)
                .where(IssuedCard.card_uuid == card_uuid, Decision.service_id == service_id)
            )

    def add_feedback(self, item: Feedback) -> bool:
        """True when stored (and chained), False when this exact item was already received."""
        values = {c.key: getattr(item, c.key) for c in Feedback.__table__.columns if c.key != "id"}
        values["created_at"] = values["created_at"] or utcnow()
        values["accepted_suggestions"] = values["accepted_suggestions"] or []
        with self.engine.begin() as connection:
            chain.lock(connection)
            duplicate = connection.execute(
                select(Feedback.id).where(
                    Feedback.card_uuid == item.card_uuid,
                    Feedback.outcome == item.outcome,
                    Feedback.outcome_timestamp == item.outcome_timestamp,
                )
            ).first()
            if duplicate is not None:
                return False
            feedback_id = connection.execute(insert(Feedback).returning(Feedback.id), values).scalar_one()
            chain.link(connection, self.audit_key, "feedback", feedback_id, {"id": feedback_id, **values})
        return True

    def record_access(self, username: str, action: str, details: dict[str, Any]) -> None:
        """Log an auditor's search or view, chained like every other entry."""
        values = {"created_at": utcnow(), "username": username, "action": action, "details": details}
        with self.engine.begin() as connection:
            chain.lock(connection)
            access_id = connection.execute(insert(AccessRecord).returning(AccessRecord.id), values).scalar_one()
            chain.link(connection, self.audit_key, "access", access_id, {"id": access_id, **values})


def _decision(row: Any) -> Decision:
    return Decision(**{c.key: row[c.key] for c in Decision.__table__.columns})
