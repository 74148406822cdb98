"""The decision log: one row per hook call and per feedback item, written before the response.

Patient ids are stored only as keyed HMAC pseudonyms; tokens and raw prefetch are never stored
(a digest of the inputs is). Every row is linked into the hash chain (cds_service.audit.chain) in the
transaction that writes it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import psycopg
from sqlalchemy import JSON, Insert, Integer, Select, String, and_, bindparam, exists, func, insert, not_, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from cds_service.audit import chain
from cds_service.models import (
    AccessRecord,
    Base,
    Checkpoint,
    Decision,
    DriverStatement,
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
class CardDecision:
    """What feedback on a card needs of the decision that issued it."""

    id: int
    suggestion_uuids: tuple[str, ...]
    patient_pseudonym: str | None


@dataclass(frozen=True)
class SnoozeRule:
    """How long feedback on a service's card silences that service's cards for the patient at that EHR
    (issuer and tenant), in days, 0 for not at all: an override with one of `reasons` (codes of `system`,
    or sent without a system) for that reason's days; any other override (another code or system, or no
    reason) for `other_days`; taking the card's suggestion (`accepted`) for `accepted_days`."""

    system: str
    reasons: tuple[tuple[str, int], ...]  # (code, days)
    other_days: int
    accepted_days: int

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.reasons)

    @property
    def silences(self) -> bool:
        """Whether any feedback snoozes at all (every duration 0: the append does not look)."""
        return any(days > 0 for days in (self.other_days, self.accepted_days, *(d for _, d in self.reasons)))


_DECISION_COLUMNS = tuple(c for c in Decision.__table__.columns if c.key != "id")
_INSERT_DECISION = insert(Decision).returning(Decision.id)
_INSERT_LOG_ENTRY = insert(LogEntry)


def _of_tenant(column: Any, tenant: Any) -> Any:
    """`column` holds this tenant; no tenant is stored as NULL and compared as ''."""
    return func.coalesce(column, "") == tenant


@cache  # built once per shape, so SQLAlchemy's compiled cache is hit on every later call
def _state_query(snooze: tuple[str, ...] | None, postgres: bool, answered: bool) -> Select[Any]:
    """One row read under the chain lock: the chain head; on PostgreSQL the new decision's id (so the
    decision, its cards and its link go in one statement); for an answerable call the earlier answers
    to its hookInstance (`earlier`: any; `same`: to this very request from this very caller); and, with
    the snooze rule's reason codes, whether recent feedback by the same issuer and tenant on this
    patient snoozes the cards."""
    columns: list[Any] = [chain.HEAD.c.seq, chain.HEAD.c.entry_hash]
    if postgres:
        columns.append(
            select(func.nextval(func.pg_get_serial_sequence("decisions", "id"))).scalar_subquery().label("decision_id")
        )
    issuer = bindparam("issuer", type_=String)
    tenant = bindparam("tenant", type_=String)
    if answered:
        earlier = (
            Decision.service_id == bindparam("service_id", type_=String),
            Decision.hook_instance == bindparam("hook_instance", type_=String),
            Decision.status_code == 200,
        )
        same = (
            Decision.issuer == issuer,
            _of_tenant(Decision.tenant, tenant),
            Decision.input_digest == bindparam("input_digest", type_=String),
        )
        columns.append(select(func.min(Decision.id)).where(*earlier).scalar_subquery().label("earlier"))
        columns.append(select(func.min(Decision.id)).where(*earlier, *same).scalar_subquery().label("same"))
    if snooze is not None:
        # each kind of feedback snoozes from its own `since` (NULL when its duration is 0, which no
        # created_at is >= to); the predicates are NULL-safe, so an override without a code or system
        # falls to the "other" branch, and the shape only varies with the reason codes (cached above)
        system = bindparam("snooze_system", type_=String)
        ours = or_(Feedback.override_system == system, Feedback.override_system.is_(None))
        reasons = [and_(func.coalesce(Feedback.override_code, "") == code, ours) for code in snooze]
        overridden = Feedback.outcome == "overridden"

        def since(name: str) -> Any:
            return Feedback.created_at >= bindparam(name, type_=Feedback.created_at.type)

        recent_feedback = select(Feedback.id).where(
            Feedback.service_id == bindparam("service_id", type_=String),
            Feedback.patient_pseudonym == bindparam("patient_pseudonym", type_=String),
            # patient ids are the EHR's own: the same id at another EHR or tenant is another patient
            Feedback.issuer == issuer,
            _of_tenant(Feedback.tenant, tenant),
            or_(
                *(and_(overridden, reason, since(f"snooze_since_{i}")) for i, reason in enumerate(reasons)),
                and_(overridden, *(not_(reason) for reason in reasons), since("snooze_since_other")),
                and_(Feedback.outcome == "accepted", since("snooze_since_accepted")),
            ),
        )
        columns.append(exists(recent_feedback).label("snoozed"))
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
# the shape of an append's read under the lock: the snooze rule's reason codes (None: no snooze
# check), and whether the call is answerable (status 200 with a hookInstance)
_Shape = tuple[tuple[str, ...] | None, bool]


class _PostgresAppend:
    """A hook call's append on PostgreSQL through the driver's cursor, with statements SQLAlchemy compiled
    once: its per-execution work was the larger part of the append's CPU (bench/README.md)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.lock = DriverStatement.of(chain.POSTGRES_LOCK, dialect)
        self._states: dict[_Shape, DriverStatement] = {}
        self.insert = DriverStatement.of(_postgres_insert(), dialect)

    def state(self, shape: _Shape) -> DriverStatement:
        """The read under the lock for this shape, compiled on first use (a race compiles it twice, harmlessly)."""
        statement = self._states.get(shape)
        if statement is None:
            statement = self._states[shape] = DriverStatement.of(_state_query(shape[0], True, shape[1]), self.dialect)
        return statement


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
        postgres = engine.dialect.name == "postgresql"
        self._postgres_statements = _PostgresAppend(engine.dialect) if postgres else None

    def pseudonym(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def append(self, decision: Decision, snooze: SnoozeRule | None = None) -> Decision:
        """Commit the decision and its chain link, or return the answer already logged for this call.

        A successful decision is idempotent on the call: a retry of the same request (same keyed input
        digest) by the same issuer and tenant to the same service and hookInstance gets the first answer.
        Any other reuse of a hookInstance (another patient, body or caller) is answered afresh and logged
        with `reuse_of` naming the earlier answer. The check runs under the chain lock, and a unique index
        over the answered calls backs it, so two identical calls racing each other log one decision.
        Failed attempts (400, 412) are logged too but answer nothing, so a retry after one is assessed.
        With a snooze rule, a decision with cards is checked against recent feedback on the same
        service's cards for the same patient from the same issuer and tenant (each within its duration),
        and logged as "snoozed" without cards when any applies.
        On PostgreSQL an append is four round trips: the lock, one read, one insert, the commit.
        """
        values = {c.key: getattr(decision, c.key) for c in _DECISION_COLUMNS}
        values["created_at"] = values["created_at"] or self.clock()
        check_snooze = snooze is not None and snooze.silences and bool(decision.cards and decision.patient_pseudonym)
        answerable = decision.status_code == 200 and decision.hook_instance is not None
        parameters: dict[str, Any] = {"issuer": decision.issuer, "tenant": decision.tenant or ""}
        if answerable:
            parameters.update(
                service_id=decision.service_id, hook_instance=decision.hook_instance, input_digest=decision.input_digest
            )
        if snooze is not None and check_snooze:
            now = self.clock()

            def since(days: int) -> datetime | None:
                return now - timedelta(days=days) if days > 0 else None

            parameters.update(
                service_id=decision.service_id,
                patient_pseudonym=decision.patient_pseudonym,
                snooze_system=snooze.system,
                snooze_since_other=since(snooze.other_days),
                snooze_since_accepted=since(snooze.accepted_days),
                **{f"snooze_since_{i}": since(days) for i, (_, days) in enumerate(snooze.reasons)},
            )
        shape: _Shape = (snooze.codes if snooze is not None and check_snooze else None, answerable)
        append = self._append_postgres if self._postgres_statements else self._append
        try:
            decision_id = append(values, shape, parameters)
        except _Answered as answered:
            return self._decision_by_id(answered.decision_id)
        except (IntegrityError, psycopg.IntegrityError):
            # the unique index behind the check under the lock: this call was answered a moment earlier
            with self.engine.connect() as connection:
                earlier = self._answered(connection, decision)
            if earlier is None:
                raise
            return earlier
        for key in ("cards", "card_uuids", "suggestion_uuids", "outcome", "created_at", "reuse_of"):
            setattr(decision, key, values[key])
        decision.id = decision_id
        return decision

    @staticmethod
    def _settle(values: dict[str, Any], state: Mapping[str, Any]) -> None:
        """Apply what the read under the lock found: an earlier answer to this call, a reuse, a snooze."""
        if state.get("same") is not None:
            raise _Answered(int(state["same"]))
        if state.get("earlier") is not None:
            values["reuse_of"] = int(state["earlier"])
        if state.get("snoozed"):
            values.update(cards=[], card_uuids=[], suggestion_uuids=[], outcome="snoozed")

    def _append(self, values: dict[str, Any], shape: _Shape, parameters: dict[str, Any]) -> int:
        with self.engine.begin() as connection:
            chain.lock(connection)
            state = connection.execute(_state_query(shape[0], False, shape[1]), parameters).one()
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

    def _append_postgres(self, values: dict[str, Any], shape: _Shape, parameters: dict[str, Any]) -> int:
        statements = self._postgres_statements
        assert statements is not None
        with self.engine.begin() as connection:
            cursor = connection.connection.cursor()
            try:
                statements.lock.execute(cursor, {})
                statements.state(shape).execute(cursor, parameters)
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


def _decision(row: Any) -> Decision:
    return Decision(**{c.key: row[c.key] for c in Decision.__table__.columns})
