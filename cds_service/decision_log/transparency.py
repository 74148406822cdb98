"""Decision proofs anyone can verify: a Merkle tree (RFC 9162) over the chain, with signed checkpoints.

Leaf i is the chain entry of sequence i + 1, as `leaf_of` writes it (its kind, id, time, payload hash and
keyed hashes, in canonical JSON); the payload hash is SHA-256 of the logged row, so a proof ties the row
to the tree. The tree is kept as its perfect subtrees' hashes (`merkle_nodes`) and extended by the
periodic anchoring task, which then signs a checkpoint (C2SP tlog-checkpoint in a signed note) with an
Ed25519 key kept outside the database. A proof file (C2SP tlog-proof, the entry on its `extra` line)
needs no database and no audit key to verify: only the checkpoint key's public half."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.engine import Connection, Engine

from cds_service.database import utcnow
from cds_service.decision_log import chain, merkle
from cds_service.decision_log.proof import prove
from cds_service.decision_log.signed_note import Signer, sign_checkpoint
from cds_service.decision_log.tables import MAX_ID, Checkpoint, Feedback, LogEntry, TreeCheckpoint, TreeNode

LEAF_PREFIX = b"spine-cds/leaf/v1\n"
PURGED_PREFIX = b"spine-cds/purged/v1\n"
_BATCH = 5000  # entries added to the tree per transaction


class NotAnchored(LookupError):
    """There is no signed checkpoint covering the entry yet, or no such entry."""


_NODES = select(TreeNode.level, TreeNode.idx, TreeNode.hash).where(
    TreeNode.level.in_(bindparam("levels", expanding=True)), TreeNode.idx.in_(bindparam("indexes", expanding=True))
)


class DatabaseNodeStore:
    """`merkle.NodeStore` on `merkle_nodes`, within the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def size(self) -> int:
        last = self.connection.execute(select(func.max(TreeNode.idx)).where(TreeNode.level == 0)).scalar_one()
        return 0 if last is None else int(last) + 1

    def get_many(self, nodes: Sequence[merkle.NodeId]) -> list[bytes]:
        if not nodes:
            return []
        # one statement of a fixed shape (compiled once): the levels and indexes asked for, as two lists. Their
        # combinations are a superset of the nodes, read by the primary key and filtered here; a proof asks
        # for about 2 log2(n) nodes, so the superset stays a few hundred rows at most
        found: dict[tuple[int, int], bytes] = {}
        levels = sorted({level for level, _ in nodes})
        indexes = sorted({idx for _, idx in nodes})
        for start in range(0, len(indexes), 500):  # bounded IN lists
            rows = self.connection.execute(_NODES, {"levels": levels, "indexes": indexes[start : start + 500]})
            found.update({(r.level, r.idx): bytes(r.hash) for r in rows})
        return [found[node] for node in nodes]

    def put_many(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        if nodes:
            self.connection.execute(insert(TreeNode), [{"level": lv, "idx": i, "hash": h} for lv, i, h in nodes])


class _Snapshot:
    """Every stored node read at once: for proving many entries, one query instead of one per proof."""

    def __init__(self, connection: Connection) -> None:
        rows = connection.execute(select(TreeNode.level, TreeNode.idx, TreeNode.hash))
        self.nodes = {(r.level, r.idx): bytes(r.hash) for r in rows}
        self._size = sum(1 for level, _ in self.nodes if level == 0)

    def size(self) -> int:
        return self._size

    def get_many(self, nodes: Sequence[merkle.NodeId]) -> list[bytes]:
        return [self.nodes[node] for node in nodes]

    def put_many(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        raise TypeError("a snapshot is read only")


_SNAPSHOT_FROM = 200  # entries proved in one call from which reading the whole tree once is cheaper


def leaf_of(entry: Any) -> bytes:
    """The leaf bytes of one chain entry (a log_chain row)."""
    fields = ("seq", "kind", "entry_id", "created_at", "payload_hash", "prev_hash", "entry_hash")
    return LEAF_PREFIX + chain.canonical({name: getattr(entry, name) for name in fields})


@dataclass(frozen=True)
class SignedCheckpoint:
    size: int
    root_hash: str
    note: str


def purged_leaf(seq: int) -> bytes:
    """The leaf standing for chain entry `seq` when a retention purge deleted it before the tree took it in."""
    return PURGED_PREFIX + chain.canonical({"seq": seq})


def extend_and_sign(engine: Engine, signer: Signer) -> SignedCheckpoint | None:
    """Add the chain's new entries to the tree, then sign a checkpoint of it; None when nothing was added.

    Entries a retention purge deleted before the tree reached them (up to the purge's chain checkpoint)
    become `purged_leaf` placeholders, so the tree goes on from the first entry kept. Any other gap stops
    the tree there; the chain's verification reports it as deleted entries."""
    while True:
        with engine.begin() as connection:
            chain.lock(connection)  # one extender at a time, and no entry half-visible
            store = DatabaseNodeStore(connection)
            size = store.size()
            entries = connection.execute(
                select(LogEntry).where(LogEntry.seq > size).order_by(LogEntry.seq).limit(_BATCH)
            ).all()
            purged = _purged_before(connection, size, entries[0].seq if entries else None)
            if purged:
                merkle.append_many(store, [purged_leaf(seq) for seq in purged])
                continue  # then the entries after them
            contiguous = [e for position, e in enumerate(entries) if e.seq == size + 1 + position]
            if contiguous:
                merkle.append_many(store, [leaf_of(e) for e in contiguous])
            if len(contiguous) < _BATCH:
                return _sign(connection, store, signer)


def _purged_before(connection: Connection, size: int, next_seq: int | None) -> range:
    """The next sequence numbers past the tree's end (at most a batch) that a purge deleted, and no entry holds."""
    purged_to = connection.execute(select(func.max(Checkpoint.seq))).scalar()
    if purged_to is None:
        return range(0)
    end = int(purged_to) if next_seq is None else min(int(purged_to), next_seq - 1)
    return range(size + 1, min(end, size + _BATCH) + 1)


def _sign(connection: Connection, store: DatabaseNodeStore, signer: Signer) -> SignedCheckpoint | None:
    size = store.size()
    if size == 0:
        return None
    last = connection.execute(select(func.max(TreeCheckpoint.size))).scalar_one()
    if last is not None and int(last) >= size:
        return None
    root = merkle.root(store, size)
    note = sign_checkpoint(signer.name, size, root, signer)
    connection.execute(insert(TreeCheckpoint).values(size=size, created_at=utcnow(), root_hash=root.hex(), note=note))
    return SignedCheckpoint(size, root.hex(), note)


def tree_problem(engine: Engine, batch: int = _BATCH) -> chain.Problem | None:
    """Whether the chain's entries are still the tree's leaves: an entry rewritten after the tree took it in
    (even with the audit key, its row and hashes made to agree) no longer matches; None when all match."""
    with engine.connect() as connection:
        size = DatabaseNodeStore(connection).size()
        last = 0
        while last < size:
            entries = connection.execute(
                select(LogEntry).where(LogEntry.seq > last, LogEntry.seq <= size).order_by(LogEntry.seq).limit(batch)
            ).all()
            if not entries:
                return None  # the rest was purged after the tree took it in
            leaves = dict(
                connection.execute(
                    select(TreeNode.idx, TreeNode.hash).where(
                        TreeNode.level == 0, TreeNode.idx.in_([e.seq - 1 for e in entries])
                    )
                ).all()
            )
            for entry in entries:
                if bytes(leaves.get(entry.seq - 1, b"")) != merkle.leaf_hash(leaf_of(entry)):
                    detail = "it differs from the Merkle tree's leaf: it changed after the tree took it in"
                    return chain.Problem("edited", detail, entry.seq, entry.kind, entry.entry_id)
            last = entries[-1].seq
    return None


def prove_entry(engine: Engine, kind: str, entry_id: int) -> str:
    """The proof file of one logged decision, feedback item or access, under the newest signed checkpoint."""
    return prove_entries(engine, kind, [entry_id])[entry_id]


def prove_feedback(engine: Engine, decision_id: int, feedback_id: int) -> str:
    """The proof file of one feedback item on this decision (NotAnchored when the decision has no such item)."""
    with engine.connect() as connection:
        ours = (
            max(decision_id, feedback_id) <= MAX_ID
            and connection.execute(
                select(Feedback.id).where(Feedback.id == feedback_id, Feedback.decision_id == decision_id)
            ).first()
            is not None
        )
    if not ours:
        raise NotAnchored(f"decision {decision_id} has no feedback item {feedback_id}")
    return prove_entry(engine, "feedback", feedback_id)


def prove_entries(engine: Engine, kind: str, entry_ids: Sequence[int]) -> dict[int, str]:
    """The proof files of these entries under the newest signed checkpoint, read in one connection."""
    with engine.connect() as connection:
        checkpoint = connection.execute(select(TreeCheckpoint).order_by(TreeCheckpoint.size.desc()).limit(1)).first()
        store: merkle.NodeStore = (
            _Snapshot(connection) if len(entry_ids) >= _SNAPSHOT_FROM else DatabaseNodeStore(connection)
        )
        proofs: dict[int, str] = {}
        for start in range(0, len(entry_ids), 500):
            wanted = list(entry_ids[start : start + 500])
            rows = connection.execute(select(LogEntry).where(LogEntry.kind == kind, LogEntry.entry_id.in_(wanted))).all()
            entries = {row.entry_id: row for row in rows}
            for entry_id in wanted:
                entry = entries.get(entry_id)
                if entry is None:
                    raise NotAnchored(f"no {kind} {entry_id} in the log (or it was purged)")
                if checkpoint is None or checkpoint.size < entry.seq:
                    raise NotAnchored(f"{kind} {entry_id} is not under a signed checkpoint yet: run `spine-cds audit anchor`")
                # refuses a proof that could not verify: the leaf and the root must be the stored ones
                proofs[entry_id] = prove(store, entry.seq - 1, leaf_of(entry), checkpoint.note)
    return proofs


def consistency(engine: Engine, old_size: int) -> dict[str, Any]:
    """The consistency proof from the checkpoint of `old_size` to the newest, with both signed notes."""
    with engine.connect() as connection:
        old = connection.execute(select(TreeCheckpoint).where(TreeCheckpoint.size == old_size)).first()
        new = connection.execute(select(TreeCheckpoint).order_by(TreeCheckpoint.size.desc()).limit(1)).first()
        if old is None or new is None:
            raise NotAnchored(f"no signed checkpoint of size {old_size}")
        hashes = merkle.consistency_proof(DatabaseNodeStore(connection), old.size, new.size)
    return {"old": old.note, "new": new.note, "proof": [h.hex() for h in hashes]}


def consistency_file(engine: Engine, old_size: int) -> str:
    """The consistency proof as the JSON file `spine-cds audit verify-consistency` checks."""
    return json.dumps(consistency(engine, old_size), indent=2) + "\n"


def checkpoint_note(engine: Engine, size: int) -> str | None:
    """The signed note of the checkpoint of `size` entries, if there is one."""
    with engine.connect() as connection:
        return connection.execute(select(TreeCheckpoint.note).where(TreeCheckpoint.size == size)).scalar_one_or_none()


def anchoring_state(engine: Engine) -> tuple[datetime | None, int]:
    """When the newest checkpoint was signed (None if never), and how many chain entries it does not cover yet."""
    with engine.connect() as connection:
        newest = connection.execute(
            select(TreeCheckpoint.size, TreeCheckpoint.created_at).order_by(TreeCheckpoint.size.desc()).limit(1)
        ).first()
        head = connection.execute(select(func.max(LogEntry.seq))).scalar()
    covered = int(newest.size) if newest else 0
    return (newest.created_at if newest else None), max(0, int(head or 0) - covered)


def checkpoints(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The newest signed checkpoints: what an outside auditor keeps, to check later that the log only grew."""
    with engine.connect() as connection:
        rows = connection.execute(select(TreeCheckpoint).order_by(TreeCheckpoint.size.desc()).limit(limit)).all()
    return [{"size": r.size, "created_at": r.created_at.isoformat(), "root_hash": r.root_hash, "note": r.note} for r in rows]
