"""The decision log: one row per hook call and per feedback item, written before the response.

Patient ids are stored only as keyed HMAC pseudonyms; tokens and raw prefetch are never stored
(a digest of the inputs is). The schema is managed by Alembic (cds_service/migrations).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("service_id", "hook_instance", name="uq_decisions_service_instance"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    service_id: Mapped[str] = mapped_column(String(100))
    hook: Mapped[str | None] = mapped_column(String(100))
    hook_instance: Mapped[str | None] = mapped_column(String(200))
    issuer: Mapped[str | None] = mapped_column(String(500))
    tenant: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(500))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    model_id: Mapped[str | None] = mapped_column(String(100))
    model_version: Mapped[str | None] = mapped_column(String(50))
    model_hash: Mapped[str | None] = mapped_column(String(80))
    band: Mapped[str | None] = mapped_column(String(20))
    outcome: Mapped[str] = mapped_column(String(40))
    status_code: Mapped[int] = mapped_column(Integer)
    card_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    suggestion_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    assessment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cards: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    input_digest: Mapped[str | None] = mapped_column(String(80))
    latency_ms: Mapped[float] = mapped_column(Float)


class IssuedCard(Base):
    """Which decision showed a card: feedback names cards by uuid only."""

    __tablename__ = "issued_cards"

    card_uuid: Mapped[str] = mapped_column(String(100), primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"), index=True)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id"), index=True)
    service_id: Mapped[str] = mapped_column(String(100))
    card_uuid: Mapped[str] = mapped_column(String(100), index=True)
    outcome: Mapped[str] = mapped_column(String(20))
    outcome_timestamp: Mapped[str] = mapped_column(String(40))
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON, default=list)
    override_code: Mapped[str | None] = mapped_column(String(100))
    override_system: Mapped[str | None] = mapped_column(String(200))
    override_comment: Mapped[str | None] = mapped_column(String(2000))
    issuer: Mapped[str | None] = mapped_column(String(500))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # with WAL, NORMAL keeps the file consistent on power loss; production logs go to PostgreSQL
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, json_serializer=_json)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # no pre-ping: it costs a round trip per request; a dropped connection fails one request and is replaced
    return create_engine(url, pool_size=5, max_overflow=5, pool_recycle=1800, json_serializer=_json)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@dataclass(frozen=True)
class SnoozeRule:
    """Overrides with these reasons, this recent, silence a service's cards for that patient."""

    system: str
    codes: frozenset[str]
    days: int


_INSERT_DECISION = insert(Decision).returning(Decision.id)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class DecisionLog:
    def __init__(self, engine: Engine, pseudonym_key: bytes) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._key = pseudonym_key

    def pseudonym(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def append(self, decision: Decision, snooze: SnoozeRule | None = None) -> Decision:
        """Commit the decision, or return the row already logged for this (service, hookInstance).

        With a snooze rule, a decision with cards is first checked against recent overrides for the
        same patient in the same transaction, and logged as "snoozed" without cards when one applies.
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
        except IntegrityError:
            # the same hook call again (a retry): answer what was logged the first time
            with self.sessions() as session:
                existing = self._by_instance(session, decision.service_id, decision.hook_instance or "")
            if existing is None:
                raise
            if existing.status_code != 200 and decision.status_code == 200:
                # a failed attempt (400, 412) does not answer its retry: the successful retry replaces it
                return self._replace_failed(existing, decision)
            return existing
        decision.id = decision_id
        decision.created_at = values["created_at"]
        return decision

    def _replace_failed(self, failed: Decision, decision: Decision) -> Decision:
        values = {c.key: getattr(decision, c.key) for c in Decision.__table__.columns if c.key != "id"}
        values["created_at"] = values["created_at"] or utcnow()
        with self.engine.begin() as connection:
            replaced = connection.execute(
                update(Decision).where(Decision.id == failed.id, Decision.status_code != 200).values(**values)
            ).rowcount
            if replaced and decision.card_uuids:
                connection.execute(insert(IssuedCard), [{"card_uuid": u, "decision_id": failed.id} for u in decision.card_uuids])
        if not replaced:  # a concurrent retry replaced it first
            with self.sessions() as session:
                return session.get_one(Decision, failed.id)
        decision.id = failed.id
        decision.created_at = values["created_at"]
        return decision

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
        """True when stored, False when this exact item was already received."""
        with self.sessions() as session:
            session.add(item)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
            return True
