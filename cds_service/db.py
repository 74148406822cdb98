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
from typing import Any

from sqlalchemy import insert, or_, select
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


_INSERT_DECISION = insert(Decision).returning(Decision.id)


class DecisionLog:
    def __init__(self, engine: Engine, pseudonym_key: bytes, audit_key: bytes) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._key = pseudonym_key
        self.audit_key = audit_key

    def pseudonym(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def append(self, decision: Decision, snooze: SnoozeRule | None = None) -> Decision:
        """Commit the decision and its chain link, or return the answer already logged for this call.

        A successful decision is idempotent on (service, hookInstance): a retry gets the first answer.
        Failed attempts (400, 412) are logged too but answer nothing, so a retry after one is assessed.
        With a snooze rule, a decision with cards is checked against recent overrides for the same
        patient and logged as "snoozed" without cards when one applies. The chain lock is taken last,
        so appends queue only for the link and the commit; the duplicate check runs under it, so two
        identical calls racing each other still log one decision.
        """
        try:
            with self.engine.begin() as connection:
                if snooze and decision.cards and self._snoozed(connection, decision, snooze):
                    decision.cards, decision.card_uuids, decision.suggestion_uuids = [], [], []
                    decision.outcome = "snoozed"
                values = {c.key: getattr(decision, c.key) for c in Decision.__table__.columns if c.key != "id"}
                values["created_at"] = values["created_at"] or utcnow()
                # parameters passed apart from the statement let SQLAlchemy reuse its compiled form
                decision_id = connection.execute(_INSERT_DECISION, values).scalar_one()
                if decision.card_uuids:
                    connection.execute(
                        insert(IssuedCard), [{"card_uuid": u, "decision_id": decision_id} for u in decision.card_uuids]
                    )
                chain.lock(connection)
                earlier = self._answered(connection, decision, excluding=decision_id)
                if earlier is not None:
                    raise _AlreadyLogged(earlier)  # rolls this attempt back
                chain.link(connection, self.audit_key, "decision", decision_id, {"id": decision_id, **values})
        except _AlreadyLogged as logged:
            return logged.decision
        except IntegrityError:
            # the same card uuids, committed by a concurrent identical call a moment earlier
            with self.engine.connect() as connection:
                earlier = self._answered(connection, decision, excluding=None)
            if earlier is None:
                raise
            return earlier
        decision.id = decision_id
        decision.created_at = values["created_at"]
        return decision

    @staticmethod
    def _answered(connection: Connection, decision: Decision, excluding: int | None) -> Decision | None:
        if decision.status_code != 200 or decision.hook_instance is None:
            return None
        query = select(Decision).where(
            Decision.service_id == decision.service_id,
            Decision.hook_instance == decision.hook_instance,
            Decision.status_code == 200,
        )
        if excluding is not None:  # this attempt's own row; any other committed answer wins
            query = query.where(Decision.id != excluding)
        row = connection.execute(query.order_by(Decision.id).limit(1)).first()
        return _decision(row._mapping) if row is not None else None

    @staticmethod
    def _snoozed(connection: Connection, decision: Decision, rule: SnoozeRule) -> bool:
        if decision.patient_pseudonym is None or rule.days <= 0:
            return False
        found = connection.scalar(
            select(Feedback.id)
            .where(
                Feedback.service_id == decision.service_id,
                Feedback.patient_pseudonym == decision.patient_pseudonym,
                Feedback.outcome == "overridden",
                Feedback.override_code.in_(sorted(rule.codes)),
                or_(Feedback.override_system == rule.system, Feedback.override_system.is_(None)),
                Feedback.created_at >= utcnow() - timedelta(days=rule.days),
            )
            .limit(1)
        )
        return found is not None

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


class _AlreadyLogged(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__("already logged")
        self.decision = decision


def _decision(row: Any) -> Decision:
    return Decision(**{c.key: row[c.key] for c in Decision.__table__.columns})
