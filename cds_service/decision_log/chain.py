"""The hash chain that makes the decision log tamper-evident.

Every decision, feedback item and auditor access is linked, in the transaction that writes it, to the
entry before it:

    payload_hash = SHA-256("spine-cds/payload/v1" 0x00 canonical JSON of the row)
    entry_hash   = HMAC-SHA-256(audit key, "spine-cds/entry/v2" 0x00 kind 0x00 id 0x00 payload_hash 0x00 prev_hash
                                0x00 the entry's created_at)

Entries of format 1 (written before revision 0005) use "spine-cds/entry/v1" without the time; their time is
checked against their row's own time instead. An entry's payload covers the columns its format knew: of
format 1 not those added in 0005, of format 2 not those added in 0007 (a decision's `reason`), and in an
older entry's row those columns must still be empty.

Canonical JSON is the row's columns with sorted keys, no whitespace, UTF-8, and timestamps in UTC as
ISO 8601 with microseconds. The entry hash is keyed, so an entry cannot be forged or re-linked without
the audit key, which lives in configuration (never in the database). Appends take a lock for the
length of the transaction (PostgreSQL advisory lock; SQLite's write lock via BEGIN IMMEDIATE), so the
sequence never forks or gaps. The chain head is also anchored outside the database (`AnchorFile`), which
is what makes a cut-off tail detectable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import BigInteger, Subquery, Table, delete, func, insert, literal, select, text, union_all
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError

from cds_service.database import width
from cds_service.decision_log.tables import (
    AccessRecord,
    Anchor,
    Checkpoint,
    Decision,
    Feedback,
    IssuedCard,
    LogEntry,
    Verification,
)

GENESIS = "0" * 64
FORMAT = 3  # the entry format written now
# the columns each format's payload first covers; an older entry's payload leaves them out
_ADDED_IN_FORMAT: Mapping[int, Mapping[str, frozenset[str]]] = {
    2: {"decision": frozenset({"reuse_of"}), "feedback": frozenset({"tenant"})},
    3: {"decision": frozenset({"reason"})},
}


def _added_after(format_: int, kind: str) -> frozenset[str]:
    """The columns of `kind` rows that entries of this format predate."""
    return frozenset().union(*(added.get(kind, frozenset()) for f, added in _ADDED_IN_FORMAT.items() if f > format_))
# what reading a row the database holds but cannot hand back raises (a JSON or time column that no
# longer parses, a time beyond Python's range)
_UNREADABLE = (ValueError, TypeError, DataError)
# a format-1 entry's time is not in its hash: it must agree with the time its row was written
_FORMAT_1_TIME_TOLERANCE = timedelta(hours=1)
# advisory lock key for chain appends on PostgreSQL (any fixed 64-bit number, unique to this use)
_LOCK_KEY = 0x5350494E45434453  # "SPINECDS"
POSTGRES_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_LOCK_KEY)

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


def entry_hash(key: bytes, kind: str, entry_id: int, payload: str, prev: str, created_at: datetime | None = None) -> str:
    """The keyed hash of an entry: of format 2 with its time, of format 1 (`created_at` None) without."""
    parts = [kind.encode(), str(entry_id).encode(), payload.encode(), prev.encode()]
    if created_at is None:
        message = b"\x00".join([b"spine-cds/entry/v1", *parts])
    else:
        message = b"\x00".join([b"spine-cds/entry/v2", *parts, _timestamp(created_at).encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def lock(connection: Connection) -> None:
    """Serialise chain appends until this transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.execute(POSTGRES_LOCK)
    # SQLite: the transaction began with BEGIN IMMEDIATE and already holds the write lock


def _head_query() -> Subquery:
    # the newest entry, else the newest purge checkpoint, else genesis: one row in every case
    entries = select(LogEntry.seq, LogEntry.entry_hash).order_by(LogEntry.seq.desc()).limit(1).subquery()
    checkpoints = select(Checkpoint.seq, Checkpoint.entry_hash).order_by(Checkpoint.seq.desc()).limit(1).subquery()
    genesis = select(literal(0, BigInteger).label("seq"), literal(GENESIS).label("entry_hash"))
    candidates = union_all(select(entries), select(checkpoints), genesis).subquery()
    return select(candidates.c.seq, candidates.c.entry_hash).order_by(candidates.c.seq.desc()).limit(1).subquery("head")


HEAD = _head_query()


def head(connection: Connection) -> tuple[int, str]:
    """The last (seq, entry_hash): of the newest entry, else of the newest purge checkpoint, else genesis."""
    row = connection.execute(select(HEAD.c.seq, HEAD.c.entry_hash)).one()
    return int(row.seq), str(row.entry_hash)


def entry(
    key: bytes, kind: str, entry_id: int, row: Mapping[str, Any], seq: int, prev: str, now: datetime | None = None
) -> dict[str, Any]:
    """The log_chain row that links `row` after the entry (seq, prev), its time bound into its hash."""
    payload = payload_hash(row)
    # microseconds as stored: the time read back must hash as it was written
    created_at = now or datetime.now(UTC)
    return {
        "seq": seq + 1,
        "kind": kind,
        "entry_id": entry_id,
        "created_at": created_at,
        "payload_hash": payload,
        "prev_hash": prev,
        "entry_hash": entry_hash(key, kind, entry_id, payload, prev, created_at),
        "format": FORMAT,
    }


def link(
    connection: Connection, key: bytes, kind: str, entry_id: int, row: Mapping[str, Any], now: datetime | None = None
) -> int:
    """Append the row (already inserted in this transaction) to the chain; returns its sequence number.

    The caller must have called `lock` at the start of the transaction.
    """
    seq, prev = head(connection)
    connection.execute(insert(LogEntry), entry(key, kind, entry_id, row, seq, prev, now))
    return seq + 1


def row_of(connection: Connection, kind: str, entry_id: int) -> dict[str, Any] | None:
    table = TABLES[kind]
    found = connection.execute(select(table).where(table.c.id == entry_id)).mappings().first()
    return dict(found) if found is not None else None


# -- anchors: the chain head, recorded outside the database -------------------------------------


@dataclass(frozen=True)
class AnchorRecord:
    line: int
    kind: str
    seq: int
    entry_hash: str
    at: str
    valid: bool


def anchor_mac(key: bytes, kind: str, seq: int, entry_hash_: str, at: str) -> str:
    message = b"\x00".join([b"spine-cds/anchor/v1", kind.encode(), str(seq).encode(), entry_hash_.encode(), at.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class AnchorFile:
    """An append-only file of keyed head records, one JSON object a line.

    Keep it where the database's administrators cannot rewrite it (another volume, a WORM bucket
    mount, a log shipper's input): cutting the chain's tail is detectable only against it. Every
    record is also listed in the database (`anchors`), so a deleted or shortened file is noticed too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, key: bytes, kind: str, seq: int, entry_hash_: str) -> dict[str, Any]:
        at = _timestamp(datetime.now(UTC))
        record = {
            "kind": kind,
            "seq": seq,
            "entry_hash": entry_hash_,
            "at": at,
            "mac": anchor_mac(key, kind, seq, entry_hash_, at),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, orjson.dumps(record) + b"\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return record

    def read(self, key: bytes) -> list[AnchorRecord]:
        if not self.path.exists():
            return []
        records = []
        for number, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                raw = orjson.loads(line)
                kind, seq, hash_, at = str(raw["kind"]), int(raw["seq"]), str(raw["entry_hash"]), str(raw["at"])
                valid = hmac.compare_digest(anchor_mac(key, kind, seq, hash_, at), str(raw["mac"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                records.append(AnchorRecord(number, "?", -1, "", "", False))
                continue
            records.append(AnchorRecord(number, kind, seq, hash_, at, valid))
        return records

    def last_seq(self, key: bytes) -> int:
        return max((r.seq for r in self.read(key) if r.valid), default=0)


def _anchor(engine: Engine, key: bytes, anchors: AnchorFile, kind: str, seq: int, hash_: str) -> dict[str, Any]:
    """Write the record to the file first, then list it in the database: a crash between the two
    leaves an extra file line, which verification accepts, never a listed record the file lacks."""
    record = anchors.append(key, kind, seq, hash_)
    with engine.begin() as connection:
        connection.execute(insert(Anchor).values(**record))
    return record


def anchor(engine: Engine, key: bytes, anchors: AnchorFile) -> dict[str, Any] | None:
    """Record the current head outside the database, unless it is already recorded."""
    with engine.connect() as connection:
        seq, hash_ = head(connection)
    if seq == 0 or seq <= anchors.last_seq(key):
        return None
    return _anchor(engine, key, anchors, "head", seq, hash_)


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """The first thing found wrong: which entry, and how the log was changed."""

    what: str  # edited | deleted | reordered | inserted | truncated | unreadable
    detail: str
    seq: int | None = None
    kind: str | None = None
    entry_id: int | None = None

    def __str__(self) -> str:
        where = f"entry {self.seq}" if self.seq is not None else "the log"
        if self.kind is not None and self.entry_id is not None:
            where += f" ({self.kind} {self.entry_id})"
        return f"{where}: {self.what}: {self.detail}"


@dataclass(frozen=True)
class Report:
    entries: int
    first_seq: int | None
    head_seq: int | None
    head_hash: str | None
    anchors: int
    checkpoint_seq: int | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def checkpoint_mac(key: bytes, seq: int, entry_hash_: str, purged_before: datetime) -> str:
    message = b"\x00".join(
        [b"spine-cds/checkpoint/v1", str(seq).encode(), entry_hash_.encode(), _timestamp(purged_before).encode()]
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _start(connection: Connection, key: bytes) -> tuple[int, str, int | None, Problem | None]:
    """Where the chain starts: after the newest valid purge checkpoint, else at genesis."""
    start_seq, start_hash, checkpoint_seq = 0, GENESIS, None
    for checkpoint in connection.execute(select(Checkpoint).order_by(Checkpoint.seq)).all():
        if checkpoint_mac(key, checkpoint.seq, checkpoint.entry_hash, checkpoint.purged_before) != checkpoint.mac:
            forged = Problem("edited", f"the retention checkpoint at entry {checkpoint.seq} is not valid", seq=checkpoint.seq)
            return start_seq, start_hash, checkpoint_seq, forged
        start_seq, start_hash, checkpoint_seq = checkpoint.seq, checkpoint.entry_hash, checkpoint.seq
    return start_seq, start_hash, checkpoint_seq, None


class _Unreadable:
    """A row the database holds but cannot hand back (a JSON or time column no longer parses)."""

    def __init__(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}"[:300]


def _rows(connection: Connection, kind: str, ids: list[int]) -> dict[int, dict[str, Any] | _Unreadable]:
    if not ids:
        return {}
    table = TABLES[kind]
    try:
        found = connection.execute(select(table).where(table.c.id.in_(ids))).mappings().all()
        return {int(row["id"]): dict(row) for row in found}
    except _UNREADABLE:
        pass  # one row spoils the batch: read them one at a time to name it
    rows: dict[int, dict[str, Any] | _Unreadable] = {}
    for entry_id in ids:
        try:
            one = connection.execute(select(table).where(table.c.id == entry_id)).mappings().first()
        except _UNREADABLE as exc:
            rows[entry_id] = _Unreadable(exc)
            continue
        if one is not None:
            rows[entry_id] = dict(one)
    return rows


def _card_problems(connection: Connection, decisions: dict[int, dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """Per decision, how `issued_cards` (which routes feedback to a decision) disagrees with the card
    uuids the chained decision row records."""
    expected = {u: d for d, row in decisions.items() for u in (row.get("card_uuids") or []) if isinstance(u, str)}
    if not decisions:
        return {}
    query = select(IssuedCard.card_uuid, IssuedCard.decision_id).where(
        IssuedCard.decision_id.in_(list(decisions)) | IssuedCard.card_uuid.in_(list(expected) or [""])
    )
    recorded = {str(u): int(d) for u, d in connection.execute(query).all()}
    problems: dict[int, tuple[str, str]] = {}
    for uuid_, decision_id in expected.items():
        where = recorded.get(uuid_)
        if where is None:
            problems.setdefault(decision_id, ("deleted", f"issued card {uuid_} of this decision is missing from issued_cards"))
        elif where != decision_id:
            detail = f"issued card {uuid_} of this decision is recorded for decision {where}, which did not show it"
            problems.setdefault(decision_id, ("edited", detail))
    for uuid_, decision_id in recorded.items():
        if decision_id in decisions and expected.get(uuid_) != decision_id:
            detail = f"issued card {uuid_} is recorded for this decision, which did not show it"
            problems.setdefault(decision_id, ("inserted", detail))
    return problems


def _walk(
    connection: Connection, key: bytes, start_seq: int, start_hash: str, batch: int, until: int | None = None
) -> tuple[int, int, str, Problem | None]:
    """Walk the chain after `start_seq` (up to `until`); returns (entries, last seq, last hash, first problem)."""
    position, prev, count = start_seq, start_hash, 0
    while True:
        query = select(LogEntry).where(LogEntry.seq > position)
        if until is not None:
            query = query.where(LogEntry.seq <= until)
        try:
            entries = connection.execute(query.order_by(LogEntry.seq).limit(batch)).all()
        except _UNREADABLE as exc:
            detail = f"the chain entries after entry {position} cannot be read ({type(exc).__name__}: {exc})"[:500]
            return count, position, prev, Problem("unreadable", detail, seq=position + 1)
        if not entries:
            return count, position, prev, None
        by_kind: dict[str, list[int]] = {}
        for entry in entries:
            by_kind.setdefault(entry.kind, []).append(entry.entry_id)
        rows = {kind: _rows(connection, kind, ids) for kind, ids in by_kind.items() if kind in TABLES}
        readable = {i: r for i, r in rows.get("decision", {}).items() if isinstance(r, dict)}
        cards = _card_problems(connection, readable)
        for entry in entries:
            where = {"seq": entry.seq, "kind": entry.kind, "entry_id": entry.entry_id}
            if entry.seq != position + 1:
                missing = f"entry {position + 1}" if entry.seq == position + 2 else f"entries {position + 1} to {entry.seq - 1}"
                return count, position, prev, Problem("deleted", f"{missing} of the chain are missing", seq=position + 1)
            row = rows.get(entry.kind, {}).get(entry.entry_id)
            if row is None:
                return count, position, prev, Problem("deleted", f"the {entry.kind} row it records is missing", **where)
            if isinstance(row, _Unreadable):
                return count, position, prev, Problem("edited", f"the {entry.kind} row cannot be read ({row.error})", **where)
            problem = _entry_problem(key, entry, row)
            if problem is not None:
                return count, position, prev, Problem(problem[0], problem[1], **where)
            if entry.prev_hash != prev:
                other = connection.execute(select(LogEntry.seq).where(LogEntry.entry_hash == entry.prev_hash)).scalar()
                if other is not None:
                    detail = f"it follows entry {other} in the chain but stands at position {entry.seq}"
                    return count, position, prev, Problem("reordered", detail, **where)
                return count, position, prev, Problem("deleted", "the entry it was linked to is missing", **where)
            if entry.kind == "decision" and entry.entry_id in cards:
                return count, position, prev, Problem(*cards[entry.entry_id], **where)
            position, prev, count = entry.seq, entry.entry_hash, count + 1


def _entry_problem(key: bytes, entry: Any, row: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong with one entry and its row, by the entry's format; None when they hold."""
    if entry.format not in (1, 2, 3):
        return "edited", f"the entry's format {entry.format!r} is not one this service writes"
    added = _added_after(entry.format, entry.kind)
    late = sorted(k for k in added if row.get(k) is not None)
    if late:
        return "edited", f"the {entry.kind} row's {', '.join(late)} was set after it was logged"
    hashed_row = {k: v for k, v in row.items() if k not in added}
    at = None if entry.format == 1 else entry.created_at
    row_matches = payload_hash(hashed_row) == entry.payload_hash
    if entry_hash(key, entry.kind, entry.entry_id, entry.payload_hash, entry.prev_hash, at) != entry.entry_hash:
        if row_matches:  # the row was edited and its recorded hash rewritten to match, or the entry's time changed
            return "edited", "the entry was rewritten (its keyed hash is invalid)"
        return "inserted", "the entry was not written by this service (its keyed hash is invalid)"
    if not row_matches:
        return "edited", f"the {entry.kind} row was changed after it was logged"
    if at is None and isinstance(row.get("created_at"), datetime):
        logged, written = _utc(entry.created_at), _utc(row["created_at"])
        if abs(logged - written) > _FORMAT_1_TIME_TOLERANCE:
            return "edited", f"the entry's time {_timestamp(logged)} disagrees with its row's time {_timestamp(written)}"
    return None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _anchor_problem(
    connection: Connection, key: bytes, anchors: AnchorFile, records: list[AnchorRecord], start_seq: int, head_seq: int
) -> Problem | None:
    """The anchor file's records against the chain, and the database's list of anchors against the file."""
    for record in records:
        if not record.valid:
            return Problem("edited", f"anchor line {record.line} is not valid (the anchor file was changed)")
        if record.seq <= start_seq:
            continue
        if record.seq > head_seq:
            detail = f"the chain ends at entry {head_seq}, but entry {record.seq} was anchored at {record.at}"
            return Problem("truncated", detail, seq=head_seq + 1)
        anchored = connection.execute(select(LogEntry.entry_hash).where(LogEntry.seq == record.seq)).scalar()
        if anchored != record.entry_hash:
            return Problem("edited", f"entry {record.seq} differs from the one anchored at {record.at}", seq=record.seq)
    written = connection.execute(select(Anchor).order_by(Anchor.id)).all()
    if written and not anchors.path.exists():
        last = written[-1]
        detail = (
            f"the anchor file {anchors.path} is missing, but {len(written)} anchor(s) were written to it,"
            f" the last for entry {last.seq} at {last.at}"
        )
        return Problem("deleted", detail)
    in_file = {(r.kind, r.seq, r.entry_hash, r.at) for r in records}
    for listed in written:
        if not hmac.compare_digest(anchor_mac(key, listed.kind, listed.seq, listed.entry_hash, listed.at), listed.mac):
            return Problem("edited", f"the database's record of the anchor for entry {listed.seq} is not valid")
        if (listed.kind, listed.seq, listed.entry_hash, listed.at) not in in_file:
            detail = f"the anchor for entry {listed.seq} written at {listed.at} is missing from the anchor file {anchors.path}"
            return Problem("deleted", detail, seq=listed.seq)
    return None


def verify(engine: Engine, key: bytes, anchors: AnchorFile | None = None, batch: int = 2000) -> Report:
    """Walk the checkpoints, the chain, the rows, the issued cards and the anchors; report the first problem found."""
    with engine.connect() as connection:
        start_seq, start_hash, checkpoint_seq, problem = _start(connection, key)
        if problem is not None:
            return Report(0, None, None, None, 0, None, problem)
        count, head_seq, head_hash, problem = _walk(connection, key, start_seq, start_hash, batch)
        first = start_seq + 1 if count else None
        anchor_count = 0
        if problem is None and anchors is not None:
            records = anchors.read(key)
            anchor_count = len(records)
            problem = _anchor_problem(connection, key, anchors, records, start_seq, head_seq)
        if problem is None:
            problem = _stray(connection)
    return Report(
        count,
        first,
        head_seq if count or checkpoint_seq else None,
        head_hash if count else None,
        anchor_count,
        checkpoint_seq,
        problem,
    )


def _stray(connection: Connection) -> Problem | None:
    """A row in a logged table that no chain entry records."""
    for kind, table in TABLES.items():
        chained = select(LogEntry.entry_id).where(LogEntry.kind == kind)
        stray = connection.execute(select(table.c.id).where(table.c.id.not_in(chained)).order_by(table.c.id).limit(1)).scalar()
        if stray is not None:
            return Problem("inserted", f"{kind} {stray} is in the log but not in the chain", kind=kind, entry_id=stray)
    chained_decisions = select(LogEntry.entry_id).where(LogEntry.kind == "decision")
    card = connection.execute(
        select(IssuedCard.card_uuid, IssuedCard.decision_id).where(IssuedCard.decision_id.not_in(chained_decisions)).limit(1)
    ).first()
    if card is not None:
        detail = f"issued card {card.card_uuid} points at decision {card.decision_id}, which is not in the chain"
        return Problem("inserted", detail, kind="decision", entry_id=int(card.decision_id))
    return None


def verify_and_record(
    engine: Engine, key: bytes, anchors: AnchorFile | None, tree_check: Callable[[Engine], Problem | None] | None = None
) -> Report:
    """Verify, and keep the outcome for the auditors' integrity badge, a verification that could not
    finish included: the badge then shows it failed, never the previous green result. `tree_check` (the
    Merkle tree's leaves against the entries, transparency.tree_problem) runs once the chain holds."""
    try:
        report = verify(engine, key, anchors)
        if report.ok and tree_check is not None:
            report = replace(report, problem=tree_check(engine))
    except Exception as exc:  # any failure to finish is a failed verification, recorded before it propagates
        problem = Problem("unreadable", f"verification could not finish ({type(exc).__name__}: {exc})"[:1000])
        report = Report(0, None, None, None, 0, None, problem)
    with engine.begin() as connection:
        connection.execute(
            insert(Verification).values(
                created_at=datetime.now(UTC),
                ok=report.ok,
                entries=report.entries,
                head_seq=report.head_seq,
                problem=str(report.problem)[: width(Verification.problem)] if report.problem else None,
            )
        )
    return report


# -- retention ---------------------------------------------------------------------------------


class PurgeRefused(Exception):
    """The entries due for deletion do not verify: deleting them would destroy the evidence."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"purge refused: {problem}")
        self.problem = problem


def purge(engine: Engine, key: bytes, anchors: AnchorFile, before: datetime) -> int:
    """Delete entries older than `before` (and their rows), keeping the rest verifiable.

    The entries due for deletion are verified first, under the lock, times included (their time is in
    their keyed hash, or for format 1 must agree with their row's): a log whose times were moved back to
    make it look expired is refused with `PurgeRefused`, not deleted. The newest purged entry's hash is
    kept as a keyed checkpoint, in the database and in the anchor file; verification then starts from
    it. A decision that still has newer feedback is kept, with everything after it, so no remaining
    row refers to a purged one.
    """
    with engine.begin() as connection:
        lock(connection)
        start, start_hash, _, problem = _start(connection, key)
        if problem is not None:
            raise PurgeRefused(problem)
        first_kept = connection.execute(select(func.min(LogEntry.seq)).where(LogEntry.created_at >= before)).scalar()
        last_seq, _ = head(connection)
        cut = (first_kept - 1) if first_kept is not None else last_seq
        while cut > start:
            referenced = (
                select(func.min(LogEntry.seq))
                .join(Feedback, (LogEntry.kind == "decision") & (LogEntry.entry_id == Feedback.decision_id))
                .where(Feedback.id.in_(select(LogEntry.entry_id).where(LogEntry.kind == "feedback", LogEntry.seq > cut)))
            )
            oldest_needed = connection.execute(referenced).scalar()
            if oldest_needed is None or oldest_needed > cut:
                break
            cut = oldest_needed - 1
        if cut <= start:
            return 0
        _, reached, cut_hash, problem = _walk(connection, key, start, start_hash, 2000, until=cut)
        if problem is None and reached != cut:
            problem = Problem("deleted", f"the chain ends at entry {reached}, before entry {cut}", seq=reached + 1)
        if problem is not None:
            raise PurgeRefused(problem)
        purged = {kind: select(LogEntry.entry_id).where(LogEntry.kind == kind, LogEntry.seq <= cut) for kind in TABLES}
        connection.execute(delete(IssuedCard).where(IssuedCard.decision_id.in_(purged["decision"])))
        for kind in ("feedback", "access", "decision"):
            table = TABLES[kind]
            connection.execute(delete(table).where(table.c.id.in_(purged[kind])))
        count = connection.execute(delete(LogEntry).where(LogEntry.seq <= cut)).rowcount
        connection.execute(
            insert(Checkpoint).values(
                created_at=datetime.now(UTC),
                seq=cut,
                entry_hash=cut_hash,
                purged_before=before,
                entries_purged=count,
                mac=checkpoint_mac(key, cut, cut_hash, before),
            )
        )
    _anchor(engine, key, anchors, "checkpoint", cut, cut_hash)
    return int(count)
