"""The hash chain that makes the decision log tamper-evident.

Every decision, feedback item and auditor access is linked, in the transaction that writes it, to the
entry before it:

    payload_hash = SHA-256("spine-cds/payload/v1" 0x00 canonical JSON of the row)
    entry_hash   = HMAC-SHA-256(audit key, "spine-cds/entry/v1" 0x00 kind 0x00 id 0x00 payload_hash 0x00 prev_hash)

Canonical JSON is the row's columns with sorted keys, no whitespace, UTF-8, and timestamps in UTC as
ISO 8601 with microseconds. The entry hash is keyed, so an entry cannot be forged or re-linked without
the audit key, which lives in configuration (never in the database). Appends take a lock for the
length of the transaction (PostgreSQL advisory lock; SQLite's write lock via BEGIN IMMEDIATE), so the
sequence never forks or gaps. The chain head is also anchored outside the database (anchors.py), which
is what makes a cut-off tail detectable.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Table, insert, select, text
from sqlalchemy.engine import Connection

from cds_service.models import AccessRecord, Checkpoint, Decision, Feedback, LogEntry

GENESIS = "0" * 64
# advisory lock key for chain appends on PostgreSQL (any fixed 64-bit number, unique to this use)
_LOCK_KEY = 0x5350494E45434453  # "SPINECDS"

TABLES: Mapping[str, Table] = {
    "decision": Decision.__table__,  # type: ignore[dict-item]
    "feedback": Feedback.__table__,  # type: ignore[dict-item]
    "access": AccessRecord.__table__,  # type: ignore[dict-item]
}


def _timestamp(value: datetime) -> str:
    # SQLite hands timestamps back without a zone; they were written in UTC
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: Mapping[str, Any]) -> bytes:
    values = {k: _timestamp(v) if isinstance(v, datetime) else v for k, v in row.items()}
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS)


def payload_hash(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(b"spine-cds/payload/v1\x00" + canonical(row)).hexdigest()


def entry_hash(key: bytes, kind: str, entry_id: int, payload: str, prev: str) -> str:
    message = b"\x00".join([b"spine-cds/entry/v1", kind.encode(), str(entry_id).encode(), payload.encode(), prev.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def lock(connection: Connection) -> None:
    """Serialise chain appends until this transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    # SQLite: the transaction began with BEGIN IMMEDIATE and already holds the write lock


def head(connection: Connection) -> tuple[int, str]:
    """The last (seq, entry_hash): of the newest entry, else of the newest purge checkpoint, else genesis."""
    last = connection.execute(select(LogEntry.seq, LogEntry.entry_hash).order_by(LogEntry.seq.desc()).limit(1)).first()
    if last is not None:
        return int(last.seq), str(last.entry_hash)
    checkpoint = connection.execute(
        select(Checkpoint.seq, Checkpoint.entry_hash).order_by(Checkpoint.seq.desc()).limit(1)
    ).first()
    if checkpoint is not None:
        return int(checkpoint.seq), str(checkpoint.entry_hash)
    return 0, GENESIS


def link(connection: Connection, key: bytes, kind: str, entry_id: int, row: Mapping[str, Any]) -> int:
    """Append the row (already inserted in this transaction) to the chain; returns its sequence number.

    The caller must have called `lock` at the start of the transaction.
    """
    seq, prev = head(connection)
    payload = payload_hash(row)
    connection.execute(
        insert(LogEntry).values(
            seq=seq + 1,
            kind=kind,
            entry_id=entry_id,
            created_at=datetime.now(UTC),
            payload_hash=payload,
            prev_hash=prev,
            entry_hash=entry_hash(key, kind, entry_id, payload, prev),
        )
    )
    return seq + 1


def row_of(connection: Connection, kind: str, entry_id: int) -> dict[str, Any] | None:
    table = TABLES[kind]
    found = connection.execute(select(table).where(table.c.id == entry_id)).mappings().first()
    return dict(found) if found is not None else None
