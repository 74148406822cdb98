"""The decision log's tables: decisions, the cards shown, feedback, auditors' access, and the chain with its anchors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cds_service.database import Base, utcnow

MAX_ID = 2**31 - 1  # the largest id of a row: ids are 32-bit integer columns on PostgreSQL


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
    # why the call got its cards or none: hooks.services.REASONS, "snoozed", or a failed call's error code
    reason: Mapped[str | None] = mapped_column(String(40))
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


class TreeNode(Base):
    """A perfect subtree of the Merkle tree (RFC 9162) over the chain's entries: leaf i is entry seq i + 1."""

    __tablename__ = "merkle_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class TreeCheckpoint(Base):
    """A signed tree head (C2SP tlog-checkpoint in a signed note), written by the anchoring task."""

    __tablename__ = "tree_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    root_hash: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(2000))
