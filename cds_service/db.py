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

from sqlalchemy import Insert, Integer, Select, String, bindparam, exists, func, insert, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

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
    """One row read under the chain lock: the chain head, whether an override snoozes the cards, and on
    PostgreSQL the new decision's id (so the decision, its cards and its link go in one statement)."""
    columns: list[Any] = [chain.HEAD.c.seq, chain.HEAD.c.entry_hash]
    if snooze:
        recent_override = select(Feedback.id).where(
            Feedback.service_id == bindparam("service_id"),
            Feedback.patient_pseudonym == bindparam("patient_pseudonym"),
            Feedback.outcome == "overridden",
            Feedback.override_code.in_(bindparam("snooze_codes", expanding=True)),
            or_(Feedback.override_system == bindparam("snooze_system"), Feedback.override_system.is_(None)),
            Feedback.created_at >= bindparam("snooze_since", type_=Feedback.created_at.type),
        )
        columns.append(exists(recent_override).label("snoozed"))
    if postgres:
        columns.append(
            select(func.nextval(func.pg_get_serial_sequence("decisions", "id"))).scalar_subquery().label("decision_id")
        )
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


_INSERT_ALL_POSTGRES = _postgres_insert()


class DecisionLog:
    def __init__(self, engine: Engine, pseudonym_key: bytes, audit_key: bytes) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._key = pseudonym_key
        self.audit_key = audit_key
        self._postgres = engine.dialect.name == "postgresql"

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
        try:
            with self.engine.begin() as connection:
                chain.lock(connection)
                state = connection.execute(_state_query(check_snooze, self._postgres), parameters).one()
                if check_snooze and state.snoozed:
                    values.update(cards=[], card_uuids=[], suggestion_uuids=[], outcome="snoozed")
                if self._postgres:
                    decision_id = int(state.decision_id)
                else:
                    decision_id = connection.execute(_INSERT_DECISION, values).scalar_one()
                link = chain.entry(
                    self.audit_key, "decision", decision_id, {"id": decision_id, **values}, state.seq, state.entry_hash
                )
                card_uuids = values["card_uuids"]
                if self._postgres:
                    links = {f"link_{k}": v for k, v in link.items()}
                    connection.execute(_INSERT_ALL_POSTGRES, {"id": decision_id, "card_list": card_uuids, **values, **links})
                else:
                    if card_uuids:
                        connection.execute(insert(IssuedCard), [{"card_uuid": u, "decision_id": decision_id} for u in card_uuids])
                    connection.execute(_INSERT_LOG_ENTRY, link)
        except IntegrityError:
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

    @staticmethod
    def _by_instance(session: Session, service_id: str, hook_instance: str) -> Decision | None:
        return session.scalar(select(Decision).where(Decision.service_id == service_id, Decision.hook_instance == hook_instance))

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
