"""The RFC 9162 Merkle tree: published vectors, a recursive reference, tampering, and O(log n) lookups."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pytest

from cds_service.decision_log.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    MerkleProofError,
    NodeId,
    append,
    append_many,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

# The RFC 6962 test tree, its roots, inclusion and consistency proofs: transparency-dev/merkle,
# proof/verify_test.go (`leaves`, `roots`, `inclusionProofs`, `consistencyProofs`; the same vectors as
# google/certificate-transparency's merkle tree tests). Their inclusion vectors count leaves from 1;
# here indices are zero-based.
LEAVES = [
    bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
INCLUSION_VECTORS = [  # (index, size, path)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY_VECTORS = [  # (old size, new size, path)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")  # also from verify_test.go


# --- a reference implementation, written straight from the RFC 9162 2.1 definitions -----------------


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- fixtures --------------------------------------------------------------------------------------


def store_of(entries: Sequence[bytes]) -> MemoryNodeStore:
    store = MemoryNodeStore()
    for entry in entries:
        append(store, entry)
    return store


ENTRIES_70 = [f"entry {i}".encode() for i in range(70)]
STORE_70 = store_of(ENTRIES_70)


class CountingStore:
    """A `NodeStore` that counts what is asked of the one it wraps."""

    def __init__(self, inner: MemoryNodeStore) -> None:
        self.inner = inner
        self.calls = 0
        self.nodes = 0

    def size(self) -> int:
        return self.inner.size()

    def get_many(self, nodes: Sequence[NodeId]) -> list[bytes]:
        self.calls += 1
        self.nodes += len(nodes)
        return self.inner.get_many(nodes)

    def put_many(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self.inner.put_many(nodes)

    def reset(self) -> None:
        self.calls = self.nodes = 0


# --- published vectors -----------------------------------------------------------------------------


def test_the_roots_of_the_rfc_6962_test_tree() -> None:
    store = store_of(LEAVES)
    assert [root(store, n) for n in range(1, 9)] == ROOTS
    assert [ref_mth(LEAVES[:n]) for n in range(1, 9)] == ROOTS
    assert root(store, 0) == EMPTY_ROOT == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_the_published_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in path]
    assert inclusion_proof(store_of(LEAVES), index, size) == expected
    assert ref_path(index, LEAVES[:size]) == expected
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, expected, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY_VECTORS)
def test_the_published_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in path]
    assert consistency_proof(store_of(LEAVES), old, new) == expected
    assert ref_proof(old, LEAVES[:new]) == expected
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], expected)


# --- the store against the reference ---------------------------------------------------------------


def test_roots_and_proofs_match_the_reference_for_every_size_up_to_70() -> None:
    """Every size n <= the store's size is served from one store: older tree heads stay provable."""
    for n in range(1, 71):
        prefix = ENTRIES_70[:n]
        tree_root = ref_mth(prefix)
        assert root(STORE_70, n) == tree_root
        for m in range(n):
            path = inclusion_proof(STORE_70, m, n)
            assert path == ref_path(m, prefix), (m, n)
            verify_inclusion(leaf_hash(prefix[m]), m, n, path, tree_root)
        for m in range(1, n + 1):
            proof = consistency_proof(STORE_70, m, n)
            assert proof == ref_proof(m, prefix), (m, n)
            verify_consistency(m, n, ref_mth(ENTRIES_70[:m]), tree_root, proof)


def test_the_root_after_each_append_is_the_reference_root() -> None:
    store = MemoryNodeStore()
    for n, entry in enumerate(ENTRIES_70, start=1):
        assert append(store, entry) == n - 1
        assert store.size() == n
        assert root(store) == ref_mth(ENTRIES_70[:n])


def test_batch_appends_write_the_same_nodes_as_single_appends() -> None:
    store = MemoryNodeStore()
    assert append_many(store, ENTRIES_70[:5]) == range(0, 5)
    assert append_many(store, []) == range(5, 5)
    assert append_many(store, ENTRIES_70[5:33]) == range(5, 33)
    assert append_many(store, ENTRIES_70[33:]) == range(33, 70)
    for level in range(7):
        count = 70 >> level
        nodes = [(level, i) for i in range(count)]
        assert store.get_many(nodes) == STORE_70.get_many(nodes)


def test_proofs_and_roots_read_only_log_n_stored_hashes_in_one_call() -> None:
    store = CountingStore(MemoryNodeStore())
    append_many(store, (i.to_bytes(4, "big") for i in range(70_001)))
    bound = 2 * math.ceil(math.log2(70_001)) + 2
    for size in (1, 2, 3, 1024, 1025, 65_536, 70_001):
        store.reset()
        root(store, size)
        assert store.calls == 1
        assert store.nodes <= bound
        for index in {0, size // 3, size // 2, size - 1}:
            store.reset()
            inclusion_proof(store, index, size)
            assert (store.calls, store.nodes <= bound) == (1, True), (index, size, store.nodes)
        for old in {1, size // 2, size - 1} - {0, size}:
            store.reset()
            consistency_proof(store, old, size)
            assert store.calls == 1
            assert store.nodes <= bound, (old, size, store.nodes)
    # an append reads only the siblings it completes, at most log2(n) of them
    store.reset()
    append(store, b"one more")  # index 70_001 = 0b10001000101110001: one trailing 1
    assert (store.calls, store.nodes) == (1, 1)


# --- tampering -------------------------------------------------------------------------------------


def _flip(digest: bytes, position: int) -> bytes:
    return digest[:position] + bytes([digest[position] ^ 0x01]) + digest[position + 1 :]


INCLUSION_CASES = [(0, 1), (0, 2), (1, 2), (2, 3), (5, 8), (6, 7), (0, 70), (37, 70), (63, 64), (64, 70), (69, 70)]


@pytest.mark.parametrize(("index", "size"), INCLUSION_CASES)
def test_every_altered_inclusion_proof_fails(index: int, size: int) -> None:
    leaf = leaf_hash(ENTRIES_70[index])
    path = inclusion_proof(STORE_70, index, size)
    tree_root = root(STORE_70, size)
    verify_inclusion(leaf, index, size, path, tree_root)

    def fails(leaf: bytes, index: int, size: int, path: Sequence[bytes], tree_root: bytes) -> None:
        with pytest.raises(MerkleProofError):
            verify_inclusion(leaf, index, size, path, tree_root)

    for i, digest in enumerate(path):  # any byte of any proof hash
        for position in range(32):
            fails(leaf, index, size, [*path[:i], _flip(digest, position), *path[i + 1 :]], tree_root)
    for position in range(32):
        fails(_flip(leaf, position), index, size, path, tree_root)
        fails(leaf, index, size, path, _flip(tree_root, position))
    for other in range(-1, size + 3):  # every other index, including those past the end
        if other != index:
            fails(leaf, other, size, path, tree_root)
    for other in (*range(index + 1), size // 2, size * 2):  # sizes too small, and those transparency-dev probes
        if other != size:
            fails(leaf, index, other, path, tree_root)
    # The RFC's check binds the size only through the root: a tree of another size where the leaf's path
    # has the same shape would accept this path with *this* root (which is why the size comes from the
    # signed checkpoint). Against the root that size really has, the path fails unless it is that size's path.
    for other in range(index + 1, 71):
        if other != size and inclusion_proof(STORE_70, index, other) != path:
            fails(leaf, index, other, path, root(STORE_70, other))
    fails(leaf, index, size, [*path, SOME_HASH], tree_root)  # extended
    fails(leaf, index, size, [*path, tree_root], tree_root)
    fails(leaf, index, size, [SOME_HASH, *path], tree_root)
    fails(leaf, index, size, [*path, b""], tree_root)  # a hash of the wrong length
    if path:
        fails(leaf, index, size, path[:-1], tree_root)  # truncated
        fails(leaf, index, size, path[1:], tree_root)
        fails(leaf, index, size, [*path[:-1], path[-1][:31]], tree_root)
        fails(leaf, index, size, list(reversed(path)) if len(path) > 1 else [SOME_HASH], tree_root)
    fails(leaf, index, size, path, EMPTY_ROOT)
    fails(leaf, index, size, path, tree_root[:31])
    fails(leaf[:31], index, size, path, tree_root)
    fails(leaf_hash(b"another entry"), index, size, path, tree_root)


def test_inclusion_in_a_one_leaf_tree_is_the_leaf_itself() -> None:
    leaf = leaf_hash(b"data")
    verify_inclusion(leaf, 0, 1, [], leaf)
    assert root_from_inclusion_proof(leaf, 0, 1, []) == leaf
    for index, size in ((0, 0), (1, 0), (1, 1), (2, 1)):
        with pytest.raises(MerkleProofError):
            verify_inclusion(leaf, index, size, [], leaf)
    with pytest.raises(MerkleProofError):
        verify_inclusion(b"", 0, 1, [], b"")


CONSISTENCY_CASES = [(1, 2), (2, 3), (3, 7), (4, 8), (6, 8), (7, 8), (1, 70), (32, 70), (33, 64), (64, 70), (69, 70)]


@pytest.mark.parametrize(("old", "new"), CONSISTENCY_CASES)
def test_every_altered_consistency_proof_fails(old: int, new: int) -> None:
    proof = consistency_proof(STORE_70, old, new)
    old_root, new_root = root(STORE_70, old), root(STORE_70, new)
    verify_consistency(old, new, old_root, new_root, proof)

    def fails(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
        with pytest.raises(MerkleProofError):
            verify_consistency(old, new, old_root, new_root, proof)

    for i, digest in enumerate(proof):
        for position in range(32):
            fails(old, new, old_root, new_root, [*proof[:i], _flip(digest, position), *proof[i + 1 :]])
    for position in range(32):
        fails(old, new, _flip(old_root, position), new_root, proof)
        fails(old, new, old_root, _flip(new_root, position), proof)
    for other in range(-1, new + 3):  # every other old size
        if other != old:
            fails(other, new, old_root, new_root, proof)
    for other in (*range(old), new // 2, new * 2):
        if other != new:
            fails(old, other, old_root, new_root, proof)
    # as for inclusion, other sizes fail against the roots they really have, unless the proof is theirs too
    for other_old in range(1, new):
        if other_old != old and consistency_proof(STORE_70, other_old, new) != proof:
            fails(other_old, new, root(STORE_70, other_old), new_root, proof)
    for other_new in range(old + 1, 71):
        if other_new != new and consistency_proof(STORE_70, old, other_new) != proof:
            fails(old, other_new, old_root, root(STORE_70, other_new), proof)
    fails(old, new, new_root, old_root, proof)  # swapped roots
    fails(new, old, new_root, old_root, proof)  # time travel
    fails(old, new, old_root, new_root, [])
    fails(old, new, old_root, new_root, proof[:-1])
    fails(old, new, old_root, new_root, [*proof, SOME_HASH])
    fails(old, new, old_root, new_root, [*proof, old_root])
    fails(old, new, old_root, new_root, [*proof, new_root])
    fails(old, new, old_root, new_root, [old_root, *proof])
    fails(old, new, old_root, new_root, [proof[0], *proof])
    fails(old, new, old_root, new_root, [b"", *proof])
    fails(old, new, old_root[:31], new_root, proof)


def test_the_trivial_consistency_cases() -> None:
    r = root(STORE_70, 5)
    verify_consistency(5, 5, r, r, [])
    verify_consistency(0, 5, EMPTY_ROOT, r, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert consistency_proof(STORE_70, 0, 5) == consistency_proof(STORE_70, 5, 5) == []
    bad = [
        (5, 5, r, root(STORE_70, 6), []),  # one size, two roots
        (5, 5, r, r, [r]),  # nothing to prove, but a proof
        (0, 5, r, r, []),  # the empty tree has one root
        (0, 5, EMPTY_ROOT, r, [EMPTY_ROOT]),
        (6, 5, r, r, []),
        (-1, 5, EMPTY_ROOT, r, []),
    ]
    for old, new, old_root, new_root, proof in bad:
        with pytest.raises(MerkleProofError):
            verify_consistency(old, new, old_root, new_root, proof)


def test_a_rewritten_prefix_is_inconsistent() -> None:
    """A tree that shares only part of the old tree's leaves, then grows past it, has no consistency proof."""
    forked = store_of([*ENTRIES_70[:20], *(b"other " + e for e in ENTRIES_70[20:])])
    old_root = root(STORE_70, 40)
    for new in (40, 41, 64, 70):
        for proof in (consistency_proof(forked, 40, new), consistency_proof(STORE_70, 40, new)):
            with pytest.raises(MerkleProofError):
                verify_consistency(40, new, old_root, root(forked, new), proof)
    verify_consistency(20, 70, root(STORE_70, 20), root(forked, 70), consistency_proof(forked, 20, 70))


# --- the store and the generators' arguments --------------------------------------------------------


def test_the_memory_store_is_append_only() -> None:
    store = MemoryNodeStore()
    append(store, b"a")
    append(store, b"b")
    assert store.get_many([(0, 1), (1, 0)]) == [leaf_hash(b"b"), node_hash(leaf_hash(b"a"), leaf_hash(b"b"))]
    store.put_many([(0, 1, leaf_hash(b"b"))])  # the same hash again is a no-op
    with pytest.raises(ValueError, match="already holds another hash"):
        store.put_many([(0, 1, leaf_hash(b"c"))])
    with pytest.raises(ValueError, match="not the next node"):
        store.put_many([(0, 5, leaf_hash(b"c"))])
    with pytest.raises(ValueError, match="32 bytes"):
        store.put_many([(0, 2, b"short")])
    for missing in ((0, 2), (1, 1), (2, 0), (0, -1)):
        with pytest.raises(KeyError):
            store.get_many([missing])
    assert store.size() == 2


def test_proofs_are_only_generated_inside_the_stored_tree() -> None:
    store = store_of(LEAVES)
    for call in (
        lambda: root(store, 9),
        lambda: root(store, -1),
        lambda: inclusion_proof(store, 8, 8),
        lambda: inclusion_proof(store, 0, 0),
        lambda: inclusion_proof(store, -1, 8),
        lambda: inclusion_proof(store, 0, 9),
        lambda: consistency_proof(store, 5, 9),
        lambda: consistency_proof(store, 6, 5),
        lambda: consistency_proof(store, -1, 5),
    ):
        with pytest.raises(ValueError):
            call()
    assert inclusion_proof(store, 7) == inclusion_proof(store, 7, 8)
    assert consistency_proof(store, 3) == consistency_proof(store, 3, 8)
