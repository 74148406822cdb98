"""An append-only Merkle tree in the form of RFC 9162 (Certificate Transparency v2), section 2.1.

    leaf hash   = SHA-256(0x00 || entry)                    (2.1.1)
    node hash   = SHA-256(0x01 || left || right)            (2.1.1)
    MTH({})     = SHA-256("")                               (2.1.1)

These are the same hashes as RFC 6962 section 2.1, so roots, inclusion proofs (2.1.3) and consistency
proofs (2.1.4) interoperate with Certificate Transparency tools, transparency-dev/merkle and the
C2SP tlog-* formats.

Storage
-------
The tree is kept as the hashes of its *perfect* subtrees: node (level k, index i) is the root of the
complete subtree over leaves [i * 2^k, (i + 1) * 2^k). Appending leaf n writes (0, n) and every parent
it completes: (1, n >> 1) when n is odd, (2, n >> 2) when the two lowest bits of n are set, and so on,
so a store only ever grows and never rewrites a node. Every subtree the RFC's recursion visits for a
size n is either perfect or ends at n (the right spine), and one that ends at n is the fold of the
perfect subtrees given by the binary digits of its width. So a root or a proof for any size n up to the
store's size needs O(log n) stored hashes, fetched in one `get_many` call, whatever the store's size.

`NodeStore` is the whole interface a store implements; `MemoryNodeStore` keeps everything in memory.
A database-backed store is a table of (level, index, hash) with (level, index) as its key.

Errors
------
Verification (`verify_inclusion`, `verify_consistency`, `root_from_inclusion_proof`) raises
`MerkleProofError` for every proof the RFC's algorithms reject and for malformed input (a hash that is
not 32 bytes, an index not below the size, a negative size); it never returns a failure value. Proof
*generation* raises `ValueError` for arguments outside the stored tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}), RFC 9162 2.1.1

# (level, index): the perfect subtree over leaves [index << level, (index + 1) << level)
NodeId = tuple[int, int]


class MerkleProofError(ValueError):
    """A proof, hash or tree size that does not verify (RFC 9162 2.1.3.2, 2.1.4.2) or is malformed."""


def leaf_hash(entry: bytes) -> bytes:
    """The RFC 9162 2.1.1 hash of one leaf: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 9162 2.1.1 hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class NodeStore(Protocol):
    """Where the hashes of perfect subtrees live; the only thing the tree functions read or write.

    - `size()`: how many leaves have been appended (the number of level-0 nodes).
    - `get_many(nodes)`: the hash of each (level, index) in `nodes`, in the same order. Every node asked
      for lies inside the first `size()` leaves; a store may raise `KeyError` for one it does not hold.
    - `put_many(nodes)`: store each (level, index, hash). `append` passes the new leaf and the parents it
      completes in one call; a persistent store should write them in one transaction, so that `size()`
      never counts a leaf whose parents are missing. Nodes are written once and never change: a store
      should refuse to overwrite a node with a different hash.

    Appends must be serialised by the caller (the decision log holds its append lock), as with any
    append-only sequence.
    """

    def size(self) -> int: ...

    def get_many(self, nodes: Sequence[NodeId]) -> list[bytes]: ...

    def put_many(self, nodes: Sequence[tuple[int, int, bytes]]) -> None: ...


class MemoryNodeStore:
    """A `NodeStore` in memory: one bytearray per level, node i at bytes [32 i, 32 i + 32).

    Flat bytearrays rather than lists of bytes objects: a million leaves take 64 MB, not about 160.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def get_many(self, nodes: Sequence[NodeId]) -> list[bytes]:
        found = []
        for level, index in nodes:
            start = index * HASH_SIZE
            if level >= len(self._levels) or index < 0 or start + HASH_SIZE > len(self._levels[level]):
                raise KeyError((level, index))
            found.append(bytes(self._levels[level][start : start + HASH_SIZE]))
        return found

    def put_many(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        for level, index, digest in nodes:
            if len(digest) != HASH_SIZE:
                raise ValueError(f"node ({level}, {index}): a hash is {HASH_SIZE} bytes, not {len(digest)}")
            while level >= len(self._levels):
                self._levels.append(bytearray())
            row = self._levels[level]
            # append-only: the next node of the level, or the same hash again
            if index * HASH_SIZE == len(row):
                row += digest
            elif row[index * HASH_SIZE : (index + 1) * HASH_SIZE] != digest:
                raise ValueError(f"node ({level}, {index}) is not the next node of its level, or already holds another hash")


def append(store: NodeStore, entry: bytes) -> int:
    """Append one leaf (the entry's bytes, hashed here) and return its index.

    Reads only the left siblings the new leaf completes (one per trailing 1 bit of the index; one on
    average) and writes the leaf and its completed parents in one `put_many`.
    """
    index = store.size()
    completes = ((index ^ (index + 1)).bit_length()) - 1  # trailing 1 bits of index
    siblings = store.get_many([(level, (index >> level) - 1) for level in range(completes)]) if completes else []
    digest = leaf_hash(entry)
    writes = [(0, index, digest)]
    for level, sibling in enumerate(siblings):
        digest = node_hash(sibling, digest)
        writes.append((level + 1, index >> (level + 1), digest))
    store.put_many(writes)
    return index


def append_many(store: NodeStore, entries: Iterable[bytes]) -> range:
    """Append several leaves with one `get_many` (the current frontier) and one `put_many`; their indices."""
    first = store.size()
    frontier = _cover(0, first)
    known: dict[NodeId, bytes] = dict(zip(frontier, store.get_many(frontier), strict=True))
    writes: list[tuple[int, int, bytes]] = []
    index = first
    for entry in entries:
        digest = leaf_hash(entry)
        known[(0, index)] = digest
        writes.append((0, index, digest))
        level, position = 0, index
        while position & 1:
            digest = node_hash(known[(level, position - 1)], digest)
            level, position = level + 1, position >> 1
            known[(level, position)] = digest
            writes.append((level, position, digest))
        index += 1
    if writes:
        store.put_many(writes)
    return range(first, index)


def _split(width: int) -> int:
    """The largest power of two strictly below `width` (> 1): where RFC 9162 2.1.1 splits a subtree."""
    return 1 << ((width - 1).bit_length() - 1)


def _cover(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees that make up the RFC subtree [start, end), largest (leftmost) first.

    Valid for the ranges the RFC's recursion produces: `start` is a multiple of the largest power of two
    not above the width, so each binary digit of the width is one aligned perfect subtree.
    """
    nodes = []
    position = start
    for level in range((end - start).bit_length() - 1, -1, -1):
        if (end - start) >> level & 1:
            nodes.append((level, position >> level))
            position += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a subtree from its perfect parts, largest first: each split puts the largest on the left."""
    digest = hashes[-1]
    for left in reversed(hashes[:-1]):
        digest = node_hash(left, digest)
    return digest


def _subtree_hashes(store: NodeStore, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH of each RFC subtree in `ranges`, fetching every perfect part in one `get_many`."""
    covers = [_cover(start, end) for start, end in ranges]
    fetched = iter(store.get_many([node for cover in covers for node in cover]))
    return [_fold([next(fetched) for _ in cover]) for cover in covers]


def _check_size(store: NodeStore, size: int) -> None:
    if not 0 <= size <= store.size():
        raise ValueError(f"tree size {size} is outside the stored tree (0..{store.size()})")


def root(store: NodeStore, size: int | None = None) -> bytes:
    """MTH(D[0:size]) (RFC 9162 2.1.1) of the first `size` leaves (default: all of them)."""
    size = store.size() if size is None else size
    _check_size(store, size)
    if size == 0:
        return EMPTY_ROOT
    return _subtree_hashes(store, [(0, size)])[0]


def inclusion_proof(store: NodeStore, index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 9162 2.1.3.1): the audit path from the leaf's sibling up to the root's child."""
    size = store.size() if size is None else size
    _check_size(store, size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    siblings: list[tuple[int, int]] = []  # from the root down
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            siblings.append((start + k, end))
            end = start + k
        else:
            siblings.append((start, start + k))
            start += k
    siblings.reverse()
    return _subtree_hashes(store, siblings)


def consistency_proof(store: NodeStore, old_size: int, new_size: int | None = None) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) (RFC 9162 2.1.4.1).

    Empty when old_size is 0 or equals new_size: the RFC defines the proof for 0 < m < n, and there is
    nothing to prove otherwise (`verify_consistency` accepts exactly these cases with an empty proof).
    """
    new_size = store.size() if new_size is None else new_size
    _check_size(store, new_size)
    if not 0 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} is not between 0 and the new size {new_size}")
    if old_size in (0, new_size):
        return []
    nodes: list[tuple[int, int]] = []  # from the root down
    start, end = 0, new_size
    whole = True  # SUBPROOF's flag b: the old tree is the whole of [start, end)'s left edge so far
    while True:
        if old_size == end:
            if not whole:
                nodes.append((start, end))
            break
        k = _split(end - start)
        if old_size <= start + k:
            nodes.append((start + k, end))
            end = start + k
        else:
            nodes.append((start, start + k))
            start += k
            whole = False
    nodes.reverse()
    return _subtree_hashes(store, nodes)


def _check_hash(what: str, digest: bytes) -> None:
    if len(digest) != HASH_SIZE:
        raise MerkleProofError(f"{what} is {len(digest)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2 steps 1-5, without the final comparison).

    `leaf` is the leaf *hash* (see `leaf_hash`). Raises `MerkleProofError` when the index is not below the
    size or the proof has the wrong length for it.
    """
    _check_hash("the leaf hash", leaf)
    for position, sibling in enumerate(proof):
        _check_hash(f"proof hash {position}", sibling)
    if not 0 <= index < size:
        raise MerkleProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    digest = leaf
    for sibling in proof:
        if sn == 0:
            raise MerkleProofError(f"the inclusion proof is longer than a tree of size {size} needs")
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            # the leaf is on the right spine: skip the levels where it has no sibling
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            digest = node_hash(digest, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise MerkleProofError(f"the inclusion proof is shorter than a tree of size {size} needs")
    return digest


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], tree_root: bytes) -> None:
    """Check that the leaf hash `leaf` is at `index` in the tree of `size` leaves with root `tree_root` (RFC 9162 2.1.3.2).

    Returns nothing; raises `MerkleProofError` on any failure.
    """
    _check_hash("the root hash", tree_root)
    if root_from_inclusion_proof(leaf, index, size, proof) != tree_root:
        raise MerkleProofError(f"the inclusion proof of leaf {index} does not lead to the root of the tree of size {size}")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree (new_size, new_root) extends (old_size, old_root) (RFC 9162 2.1.4.2).

    The RFC's algorithm covers 0 < old_size < new_size. The two cases it leaves out are accepted only
    with an empty proof: old_size == new_size with equal roots, and old_size == 0 with old_root the empty
    tree's root. Returns nothing; raises `MerkleProofError` on any failure.
    """
    _check_hash("the old root hash", old_root)
    _check_hash("the new root hash", new_root)
    for position, node in enumerate(proof):
        _check_hash(f"proof hash {position}", node)
    if not 0 <= old_size <= new_size:
        raise MerkleProofError(f"sizes {old_size} -> {new_size}: a log only grows")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise MerkleProofError(f"sizes {old_size} -> {new_size} take an empty consistency proof, not {len(proof)} hashes")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise MerkleProofError("the old root is not the root of the empty tree")
        if old_size == new_size and old_root != new_root:
            raise MerkleProofError(f"two different roots for the same tree size {new_size}")
        return
    # 1. an empty path proves nothing
    if not proof:
        raise MerkleProofError(f"sizes {old_size} -> {new_size} need a non-empty consistency proof")
    # 2. a power-of-two old tree is itself a node of the new one, and its root is left out of the proof
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    # 3.-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5.
    fr = sr = path[0]
    # 6.
    for node in path[1:]:
        if sn == 0:
            raise MerkleProofError(f"the consistency proof is longer than sizes {old_size} -> {new_size} need")
        if fn & 1 or fn == sn:
            fr = node_hash(node, fr)
            sr = node_hash(node, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, node)
        fn, sn = fn >> 1, sn >> 1
    # 7.
    if sn != 0:
        raise MerkleProofError(f"the consistency proof is shorter than sizes {old_size} -> {new_size} need")
    if fr != old_root:
        raise MerkleProofError(f"the consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise MerkleProofError(f"the consistency proof does not lead to the new root (size {new_size})")
