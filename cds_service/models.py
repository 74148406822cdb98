"""The database schema and engine set-up. The schema is managed by Alembic (cds_service/migrations)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from psycopg.errors import _WaitTimeout  # psycopg's own signal that a bounded wait ran out
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    text,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ClauseElement

MIGRATIONS = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        # not unique: a failed call and its successful retry are both kept (the log is append-only)
        Index("ix_decisions_service_instance", "service_id", "hook_instance"),
        # but a call is answered once: a retry of the same request by the same caller (issuer, tenant)
        # gets the first answer; any other reuse of a hookInstance is answered afresh
        Index(
            "uq_decisions_answered",
            "service_id",
            "hook_instance",
            "issuer",
            func.coalesce(text("tenant"), ""),
            "input_digest",
            unique=True,
            sqlite_where=text("status_code = 200"),
            postgresql_where=text("status_code = 200"),
        ),
    )

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
    # the earlier answered decision whose hookInstance this call reused with another request or caller
    reuse_of: Mapped[int | None] = mapped_column(Integer)


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
    tenant: Mapped[str | None] = mapped_column(String(200))


class AccessRecord(Base):
    """An auditor's search or view: the audit trail is itself audited."""

    __tablename__ = "access_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    username: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LogEntry(Base):
    """One link of the hash chain over decisions, feedback and auditor access, in append order."""

    __tablename__ = "log_chain"
    __table_args__ = (UniqueConstraint("kind", "entry_id", name="uq_log_chain_entry"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    entry_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    payload_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    # 1: entries written before revision 0005; 2: the keyed hash also covers created_at (chain.py)
    format: Mapped[int] = mapped_column(SmallInteger, default=2, server_default="1")


class Anchor(Base):
    """A head written to the anchor file, listed here too: a missing or cut anchor file is then noticed."""

    __tablename__ = "anchors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[str] = mapped_column(String(40))
    mac: Mapped[str] = mapped_column(String(64))


class Checkpoint(Base):
    """A signed chain position kept when older entries are purged, so the rest still verifies."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))
    purged_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    entries_purged: Mapped[int] = mapped_column(Integer)
    mac: Mapped[str] = mapped_column(String(64))


class Verification(Base):
    """The outcome of a verification run, shown as the integrity badge."""

    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ok: Mapped[bool] = mapped_column(Boolean)
    entries: Mapped[int] = mapped_column(Integer)
    head_seq: Mapped[int | None] = mapped_column(BigInteger)
    problem: Mapped[str | None] = mapped_column(String(2000))


class User(Base):
    """An auditor-side account; EHR callers never have one."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # with WAL, NORMAL keeps the file consistent on power loss; production logs go to PostgreSQL
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLAlchemy issues BEGIN itself (below), so the driver must not open transactions of its own
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    # take the write lock up front: chain appends read the head and extend it in one serialised step
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, round_trip_seconds: float | None = None) -> Engine:
    """The engine for a database URL. With `round_trip_seconds` (the web service's), no PostgreSQL round
    trip (a statement, a fetch, a commit) waits longer for the server: past it the connection is closed
    and the call fails as "database unavailable" (503) instead of hanging on a stalled server."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, json_serializer=json_text)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # no pre-ping: it costs a round trip per request; a dropped connection fails one request and is replaced.
    # A database that is down answers within the connect timeout, and a full pool within pool_timeout: both
    # become a 503 with Retry-After, never a request held for half a minute
    engine = create_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_recycle=1800,
        pool_timeout=2,
        connect_args={"connect_timeout": 2},
        json_serializer=json_text,
    )
    if round_trip_seconds is not None:

        @event.listens_for(engine, "do_connect")
        def _bounded_connect(_dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> psycopg.Connection[Any]:
            connection = RoundTripBoundConnection.connect(*cargs, **cparams)
            connection.round_trip_seconds = round_trip_seconds
            return connection

    return engine


class RoundTripBoundConnection(psycopg.Connection[Any]):
    """A psycopg connection whose round trips each wait at most `round_trip_seconds` for the server.

    A stopped or wedged server (the host still accepting bytes into its socket buffers) would otherwise hold
    the request, and the pooled connection, for as long as it stays stopped: TCP keepalives and libpq's
    timeouts do not notice, and a server-side statement_timeout needs a server that runs. Every statement,
    fetch and commit passes through `wait`, which psycopg bounds when given a timeout."""

    round_trip_seconds: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = timeout if timeout is not None else self.round_trip_seconds
        try:
            return super().wait(gen, interval=interval, timeout=bound)
        except _WaitTimeout as stalled:
            if timeout is not None:
                raise  # a caller's own timeout is the caller's to handle
            # the server may still answer this round trip later: the connection cannot be reused
            self.close()
            raise psycopg.OperationalError(f"the database did not answer within {bound:g} s") from stalled


@dataclass(frozen=True)
class DriverStatement:
    """A statement compiled once to the driver's SQL, with the values of its constant parameters, for the
    paths where SQLAlchemy's per-execution work is the larger part of the cost (bench/README.md)."""

    sql: str
    constants: dict[str, Any]
    positions: tuple[str, ...] | None  # the parameter names in order, for drivers with positional parameters

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> DriverStatement:
        compiled = statement.compile(dialect=dialect)
        order = getattr(compiled, "positiontup", None)  # set by SQL compilers for positional drivers
        positions = tuple(order) if dialect.positional and order else None
        # named parameters have no value here: left out, so a call that forgets one fails loudly
        return cls(str(compiled), {k: v for k, v in compiled.params.items() if v is not None}, positions)

    def execute(self, cursor: Any, parameters: dict[str, Any]) -> None:
        values = {**self.constants, **parameters}
        cursor.execute(self.sql, [values[name] for name in self.positions] if self.positions else values)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def json_text(value: Any) -> str:
    """JSON columns' serialisation, shared with the decision log's driver-level statements."""
    return orjson.dumps(value).decode()


class PopulationJob(Base):
    """One scoring of a Bulk Data export: from files, or exported from a FHIR server first."""

    __tablename__ = "population_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(20))  # exporting | splitting | scoring | finishing | done | failed
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    patients_scored: Mapped[int] = mapped_column(Integer, default=0)
    patients_failed: Mapped[int] = mapped_column(Integer, default=0)
    worklisted: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    model_hash: Mapped[str] = mapped_column(String(80))
    as_of: Mapped[str] = mapped_column(String(10))
    error: Mapped[str | None] = mapped_column(String(2000))


class PopulationChunk(Base):
    """A few hundred patients scored by one task; done once, whatever the redeliveries."""

    __tablename__ = "population_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("population_jobs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # pending | done
    patients: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PopulationAssessment(Base):
    """One patient's assessment within a job. The worklist needs the patient id, so it is kept here."""

    __tablename__ = "population_assessments"
    __table_args__ = (UniqueConstraint("job_id", "patient_id", name="uq_population_patient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("population_jobs.id"), index=True)
    chunk: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))  # scored | error
    eligible: Mapped[bool | None] = mapped_column(Boolean)
    band: Mapped[str | None] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Float)
    suppressed: Mapped[bool | None] = mapped_column(Boolean)
    worklist: Mapped[bool] = mapped_column(Boolean, default=False)
    assessment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(2000))


class SeenToken(Base):
    """An accepted EHR JWT, remembered until it expires so it is accepted once (the replay memory
    without Redis, shared by every process on the database). Keyed by SHA-256 of `issuer|jti`, never the token."""

    __tablename__ = "seen_tokens"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # seconds since the epoch; expired rows may be reused by the same jti and are deleted now and then
    expires_at: Mapped[float] = mapped_column(Float, index=True)
