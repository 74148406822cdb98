"""The decision log: one row per hook call and per feedback item, written before the response.

Patient ids are stored only as keyed HMAC pseudonyms; tokens and raw prefetch are never stored
(a digest of the inputs is). Every row is linked into the hash chain (cds_service.decision_log.chain) in the
transaction that writes it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import psycopg
from sqlalchemy import JSON, Insert, Integer, Select, String, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from cds_service.database import DriverStatement, json_text, utcnow
from cds_service.decision_log import chain
from cds_service.decision_log.tables import AccessRecord, Decision, Feedback, IssuedCard, LogEntry
from hooks.snooze import PastFeedback


@dataclass(frozen=True)
class CardDecision:
    """What feedback on a card needs of the decision that issued it."""

    id: int
    suggestion_uuids: tuple[str, ...]
    patient_pseudonym: str | None


_DECISION_COLUMNS = tuple(c for c in Decision.__table__.columns if c.key != "id")
_INSERT_DECISION = insert(Decision).returning(Decision.id)
_INSERT_LOG_ENTRY = insert(LogEntry)


def _of_tenant(column: Any, tenant: Any) -> Any:
    """`column` holds this tenant; no tenant is stored as NULL and compared as ''."""
    return func.coalesce(column, "") == tenant


@cache  # built once per shape, so SQLAlchemy's compiled cache is hit on every later call
def _state_query(postgres: bool, answered: bool) -> Select[Any]:
    """One row read under the chain lock: the chain head; on PostgreSQL the new decision's id (so the
    decision, its cards and its link go in one statement); and for an answerable call the earlier answers
    to its hookInstance (`earlier`: any; `same`: to this very request from this very caller)."""
    columns: list[Any] = [chain.HEAD.c.seq, chain.HEAD.c.entry_hash]
    if postgres:
        columns.append(
            select(func.nextval(func.pg_get_serial_sequence("decisions", "id"))).scalar_subquery().label("decision_id")
        )
    if answered:
        earlier = (
            Decision.service_id == bindparam("service_id", type_=String),
            Decision.hook_instance == bindparam("hook_instance", type_=String),
            Decision.status_code == 200,
        )
        same = (
            Decision.issuer == bindparam("issuer", type_=String),
            _of_tenant(Decision.tenant, bindparam("tenant", type_=String)),
            Decision.input_digest == bindparam("input_digest", type_=String),
        )
        columns.append(select(func.min(Decision.id)).where(*earlier).scalar_subquery().label("earlier"))
        columns.append(select(func.min(Decision.id)).where(*earlier, *same).scalar_subquery().label("same"))
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


def _feedback_on_patient() -> Select[str, str | None, str | None, datetime]:
    """One row per kind of feedback with its newest time: how long an item silences depends only on its kind.
    Built once, with parameters: the statement is compiled once and only executed after (bench/README.md)."""
    kind = (Feedback.outcome, Feedback.override_system, Feedback.override_code)
    return (
        select(*kind, func.max(Feedback.created_at).label("at"))
        .where(
            Feedback.service_id == bindparam("service_id", type_=String),
            Feedback.patient_pseudonym == bindparam("patient_pseudonym", type_=String),
            Feedback.issuer == bindparam("issuer", type_=String),
            _of_tenant(Feedback.tenant, bindparam("tenant", type_=String)),
            Feedback.created_at >= bindparam("since", type_=Feedback.created_at.type),
        )
        .group_by(*kind)
    )


_FEEDBACK_ON_PATIENT = _feedback_on_patient()


class _PostgresAppend:
    """A hook call's append on PostgreSQL through the driver's cursor, with statements SQLAlchemy compiled
    once: its per-execution work was the larger part of the append's CPU (bench/README.md)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.lock = DriverStatement.of(chain.POSTGRES_LOCK, dialect)
        # the read under the lock, for a call that can be answered again (status 200 with a hookInstance) or not
        self.states = {answerable: DriverStatement.of(_state_query(True, answerable), dialect) for answerable in (True, False)}
        self.insert = DriverStatement.of(_postgres_insert(), dialect)


class _Answered(Exception):
    """Raised inside the append's transaction: this very call was answered before (decision id)."""

    def __init__(self, decision_id: int) -> None:
        self.decision_id = decision_id


class DecisionLog:
    def __init__(self, engine: Engine, pseudonym_key: bytes, audit_key: bytes, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._key = pseudonym_key
        self.audit_key = audit_key
        self.clock = clock
        # told each append's kind and count (the operators' metrics, when enabled)
        self.appended: Callable[[str, int], None] = lambda kind, count: None
        postgres = engine.dialect.name == "postgresql"
        self._postgres_statements = _PostgresAppend(engine.dialect) if postgres else None

    def pseudonym(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def append(self, decision: Decision) -> Decision:
        """Commit the decision and its chain link, or return the answer already logged for this call.

        A successful decision is idempotent on the call: a retry of the same request (same keyed input
        digest) by the same issuer and tenant to the same service and hookInstance gets the first answer.
        Any other reuse of a hookInstance (another patient, body or caller) is answered afresh and logged
        with `reuse_of` naming the earlier answer. The check runs under the chain lock, and a unique index
        over the answered calls backs it, so two identical calls racing each other log one decision.
        Failed attempts (400, 412) are logged too but answer nothing, so a retry after one is assessed.
        On PostgreSQL an append is four round trips: the lock, one read, one insert, the commit.
        """
        values = {c.key: getattr(decision, c.key) for c in _DECISION_COLUMNS}
        values["created_at"] = values["created_at"] or self.clock()
        answerable = decision.status_code == 200 and decision.hook_instance is not None
        parameters: dict[str, Any] = {}
        if answerable:
            parameters.update(
                service_id=decision.service_id,
                hook_instance=decision.hook_instance,
                input_digest=decision.input_digest,
                issuer=decision.issuer,
                tenant=decision.tenant or "",
            )
        append = self._append_postgres if self._postgres_statements else self._append
        try:
            decision_id = append(values, answerable, parameters)
        except _Answered as answered:
            return self._decision_by_id(answered.decision_id)
        except (IntegrityError, psycopg.IntegrityError):
            # the unique index behind the check under the lock: this call was answered a moment earlier
            with self.engine.connect() as connection:
                earlier = self._answered(connection, decision)
            if earlier is None:
                raise
            return earlier
        for key in ("created_at", "reuse_of"):
            setattr(decision, key, values[key])
        decision.id = decision_id
        self.appended("decision", 1)
        return decision

    @staticmethod
    def _settle(values: dict[str, Any], state: Mapping[str, Any]) -> None:
        """Apply what the read under the lock found: an earlier answer to this call, or a reuse."""
        if state.get("same") is not None:
            raise _Answered(int(state["same"]))
        if state.get("earlier") is not None:
            values["reuse_of"] = int(state["earlier"])

    def _append(self, values: dict[str, Any], answerable: bool, parameters: dict[str, Any]) -> int:
        with self.engine.begin() as connection:
            chain.lock(connection)
            state = connection.execute(_state_query(False, answerable), parameters).one()
            self._settle(values, dict(state._mapping))
            decision_id: int = connection.execute(_INSERT_DECISION, values).scalar_one()
            link = chain.entry(
                self.audit_key, "decision", decision_id, {"id": decision_id, **values}, state.seq, state.entry_hash, self.clock()
            )
            if values["card_uuids"]:
                connection.execute(
                    insert(IssuedCard), [{"card_uuid": u, "decision_id": decision_id} for u in values["card_uuids"]]
                )
            connection.execute(_INSERT_LOG_ENTRY, link)
        return decision_id

    def _append_postgres(self, values: dict[str, Any], answerable: bool, parameters: dict[str, Any]) -> int:
        statements = self._postgres_statements
        assert statements is not None
        with self.engine.begin() as connection:
            cursor = connection.connection.cursor()
            try:
                statements.lock.execute(cursor, {})
                statements.states[answerable].execute(cursor, parameters)
                found = cursor.fetchone()
                assert found is not None and cursor.description is not None  # the head query always answers one row
                state = dict(zip([column[0] for column in cursor.description], found, strict=True))
                self._settle(values, state)
                decision_id = state["decision_id"]
                link = chain.entry(
                    self.audit_key,
                    "decision",
                    decision_id,
                    {"id": decision_id, **values},
                    state["seq"],
                    state["entry_hash"],
                    self.clock(),
                )
                row = {k: json_text(v) if k in _JSON_COLUMNS else v for k, v in values.items()}
                links = {f"link_{k}": v for k, v in link.items()}
                statements.insert.execute(cursor, {"id": decision_id, "card_list": values["card_uuids"], **row, **links})
            finally:
                cursor.close()
        return int(decision_id)

    def _decision_by_id(self, decision_id: int) -> Decision:
        with self.engine.connect() as connection:
            row = connection.execute(select(Decision).where(Decision.id == decision_id)).one()
        return _decision(row._mapping)

    @staticmethod
    def _answered(connection: Connection, decision: Decision) -> Decision | None:
        if decision.status_code != 200 or decision.hook_instance is None:
            return None
        query = select(Decision).where(
            Decision.service_id == decision.service_id,
            Decision.hook_instance == decision.hook_instance,
            Decision.issuer == decision.issuer,
            _of_tenant(Decision.tenant, decision.tenant or ""),
            Decision.input_digest == decision.input_digest,
            Decision.status_code == 200,
        )
        row = connection.execute(query.order_by(Decision.id).limit(1)).first()
        return _decision(row._mapping) if row is not None else None

    def feedback_on_patient(
        self, service_id: str, patient_pseudonym: str, issuer: str, tenant: str | None, since: datetime
    ) -> list[PastFeedback]:
        """The feedback given since `since` on the service's cards for this patient by the same issuer and
        tenant (patient ids are the EHR's own: the same id at another EHR or tenant is another patient)."""
        parameters = {
            "service_id": service_id,
            "patient_pseudonym": patient_pseudonym,
            "issuer": issuer,
            "tenant": tenant or "",
            "since": since,
        }
        with self.engine.connect() as connection:
            rows = connection.execute(_FEEDBACK_ON_PATIENT, parameters).all()
        return [PastFeedback(r.outcome, r.override_system, r.override_code, _aware(r.at)) for r in rows]

    def decisions_for_cards(
        self, service_id: str, card_uuids: list[str], issuer: str, tenant: str | None
    ) -> dict[str, CardDecision]:
        """The decisions that showed these cards to this caller, in one query per 500 cards, reading only what
        feedback needs: another issuer's or tenant's cards are not theirs to give feedback on, and are not
        told apart from cards that do not exist."""
        found: dict[str, CardDecision] = {}
        wanted = list(dict.fromkeys(card_uuids))
        columns = (IssuedCard.card_uuid, Decision.id, Decision.card_uuids, Decision.suggestion_uuids, Decision.patient_pseudonym)
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):  # bounded IN lists
                rows = connection.execute(
                    select(*columns)
                    .join(Decision, IssuedCard.decision_id == Decision.id)
                    .where(
                        IssuedCard.card_uuid.in_(wanted[start : start + 500]),
                        Decision.service_id == service_id,
                        Decision.issuer == issuer,
                        _of_tenant(Decision.tenant, tenant or ""),
                    )
                )
                for card_uuid, decision_id, cards, suggestions, pseudonym in rows:
                    # the card must be among those the chained decision row recorded, whatever issued_cards says
                    if card_uuid in (cards or []):
                        found[card_uuid] = CardDecision(decision_id, tuple(suggestions or ()), pseudonym)
        return found

    def add_feedback_batch(self, items: list[Feedback]) -> list[bool]:
        """Store many feedback items in one transaction and one chain lock; per item, True when stored
        (and chained), False when this exact item was already received (or repeated within the batch)."""
        if not items:
            return []
        now = self.clock()
        key_of = [(item.card_uuid, item.outcome, item.outcome_timestamp) for item in items]
        with self.engine.begin() as connection:
            chain.lock(connection)
            seen: set[tuple[str, str, str]] = set()
            cards = list(dict.fromkeys(item.card_uuid for item in items))
            for start in range(0, len(cards), 500):
                existing = connection.execute(
                    select(Feedback.card_uuid, Feedback.outcome, Feedback.outcome_timestamp).where(
                        Feedback.card_uuid.in_(cards[start : start + 500])
                    )
                )
                seen.update((r[0], r[1], r[2]) for r in existing)
            fresh: list[int] = []
            for index, key in enumerate(key_of):
                if key not in seen:
                    seen.add(key)
                    fresh.append(index)
            if not fresh:
                return [False] * len(items)
            rows = []
            for index in fresh:
                values = {c.key: getattr(items[index], c.key) for c in Feedback.__table__.columns if c.key != "id"}
                values["created_at"] = values["created_at"] or now
                values["accepted_suggestions"] = values["accepted_suggestions"] or []
                rows.append(values)
            ids = connection.execute(insert(Feedback).returning(Feedback.id, sort_by_parameter_order=True), rows).scalars().all()
            seq, prev = chain.head(connection)
            links = []
            for feedback_id, values in zip(ids, rows, strict=True):
                link = chain.entry(self.audit_key, "feedback", feedback_id, {"id": feedback_id, **values}, seq, prev, now)
                links.append(link)
                seq, prev = link["seq"], link["entry_hash"]
            connection.execute(insert(LogEntry), links)
        stored = set(fresh)
        self.appended("feedback", len(stored))
        return [index in stored for index in range(len(items))]

    def add_feedback(self, item: Feedback) -> bool:
        """True when stored (and chained), False when this exact item was already received."""
        return self.add_feedback_batch([item])[0]

    def record_access(self, username: str, action: str, details: dict[str, Any]) -> None:
        """Log an auditor's search or view, chained like every other entry."""
        values = {"created_at": self.clock(), "username": username, "action": action, "details": details}
        with self.engine.begin() as connection:
            chain.lock(connection)
            access_id = connection.execute(insert(AccessRecord).returning(AccessRecord.id), values).scalar_one()
            chain.link(connection, self.audit_key, "access", access_id, {"id": access_id, **values}, self.clock())
        self.appended("access", 1)


def _decision(row: Any) -> Decision:
    return Decision(**{c.key: row[c.key] for c in Decision.__table__.columns})


def _aware(value: Any) -> datetime:
    """A stored time: SQLite returns max() as text, and times without their offset; they are kept in UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
