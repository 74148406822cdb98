"""Merkle proofs for the decision log: append cost, proof size, and prove/verify time as the tree grows.

    python3 bench/bench_proofs.py                          # 1,000,000 leaves, 1,000 random indices per size
    python3 bench/bench_proofs.py --size 100000 --samples 200

Builds one tree in the in-memory node store (cds_service.decision_log.merkle.MemoryNodeStore) by appending
--size entries of --entry-bytes bytes one at a time, as the log appends decisions. Then, for each tree size
1,000 / 10,000 / 100,000 / 1,000,000 (those up to --size, and --size itself), all served from that one store,
signs a checkpoint (Ed25519, C2SP signed note) and, over --samples random leaf indices:

- prove: `proof.prove` — the inclusion proof from the store plus the checks that the entry and the root
  match, written as a c2sp.org/tlog-proof file;
- verify: `proof.verify_proof` — parse, checkpoint signature, inclusion (what an auditor runs);
- merkle: `merkle.verify_inclusion` alone, without the signature, which dominates `verify`.

It also counts the stored hashes each proof reads (one `get_many` call), and reports the proof size in bytes
(hashes, and the whole file) at the first, middle and last leaf. Times are medians and p99 (nearest rank)
from time.perf_counter_ns. Nothing is asserted; the table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.decision_log import merkle  # noqa: E402
from cds_service.decision_log.proof import prove, verify_proof  # noqa: E402
from cds_service.decision_log.signed_note import Signer, sign_checkpoint  # noqa: E402

ORIGIN = "bench.example.org/decisions"
SIZES = (1_000, 10_000, 100_000, 1_000_000)


class CountingStore:
    """Counts the hashes read through `get_many`, to show O(log n) lookups per proof."""

    def __init__(self, inner: merkle.MemoryNodeStore) -> None:
        self.inner = inner
        self.nodes = 0

    def size(self) -> int:
        return self.inner.size()

    def get_many(self, nodes: Sequence[merkle.NodeId]) -> list[bytes]:
        self.nodes += len(nodes)
        return self.inner.get_many(nodes)

    def put_many(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self.inner.put_many(nodes)


def entry(i: int, width: int) -> bytes:
    """A stand-in for a decision's canonical JSON: distinct, `width` bytes."""
    head = b'{"id":%d,"kind":"decision","payload":"' % i
    return head + b"x" * max(0, width - len(head) - 2) + b'"}'


def percentile(values: Sequence[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def micro(ns: float) -> str:
    return f"{ns / 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="leaves in the tree (default 1,000,000)")
    parser.add_argument("--samples", type=int, default=1_000, help="random indices per tree size (default 1,000)")
    parser.add_argument("--entry-bytes", type=int, default=100, help="bytes per entry (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random indices")
    parser.add_argument(
        "--database",
        default=None,
        help="also store the tree in this database (merkle_nodes, e.g. sqlite:////tmp/tree.sqlite3) and time "
        "proving from it at the full size, as `spine-cds audit prove` does",
    )
    args = parser.parse_args()

    print(f"generating {args.size:,} entries of {args.entry_bytes} bytes", file=sys.stderr)
    entries = [entry(i, args.entry_bytes) for i in range(args.size)]
    store = merkle.MemoryNodeStore()
    gc.collect()
    gc.freeze()  # the entries are long-lived; keep the collector from rescanning them while timing
    start = time.perf_counter_ns()
    for data in entries:
        merkle.append(store, data)
    append_ns = time.perf_counter_ns() - start
    print(f"appended in {append_ns / 1e9:.2f} s", file=sys.stderr)

    signer = Signer.generate(ORIGIN)
    key = signer.verifier_key
    counting = CountingStore(store)
    rng = random.Random(args.seed)
    rows = []
    sizes_rows = []
    for size in sorted({s for s in SIZES if s <= args.size} | {args.size}):
        print(f"size {size:,}: proving and verifying {args.samples} random entries", file=sys.stderr)
        note = sign_checkpoint(ORIGIN, size, merkle.root(store, size), signer)
        indices = [rng.randrange(size) for _ in range(args.samples)]
        prove_ns, verify_ns, merkle_ns, reads = [], [], [], []
        gc.collect()
        for index in indices:
            counting.nodes = 0
            t0 = time.perf_counter_ns()
            text = prove(counting, index, entries[index], note)
            t1 = time.perf_counter_ns()
            verified = verify_proof(text, key)
            t2 = time.perf_counter_ns()
            path = merkle.inclusion_proof(store, index, size)
            t3 = time.perf_counter_ns()
            merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, size, path, verified.root_hash)
            t4 = time.perf_counter_ns()
            assert verified.entry == entries[index] and verified.index == index  # the timed path did the work
            prove_ns.append(t1 - t0)
            verify_ns.append(t2 - t1)
            merkle_ns.append(t4 - t3)
            reads.append(counting.nodes)
        rows.append((size, prove_ns, verify_ns, merkle_ns, reads))
        for index in (0, size // 2, size - 1):
            text = prove(store, index, entries[index], note)
            hashes = len(merkle.inclusion_proof(store, index, size))
            sizes_rows.append((size, index, hashes, len(text.encode())))

    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"--size {args.size} --samples {args.samples} --entry-bytes {args.entry_bytes}"
    )
    print(f"append: {args.size:,} leaves in {append_ns / 1e9:.2f} s, {append_ns / args.size / 1000:.2f} us per leaf")
    print()
    print(
        "| tree size | log2 | stored hashes read by prove (max) | prove p50 / p99 (us) | verify p50 / p99 (us) | merkle-only verify p50 / p99 (us) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size, prove_ns, verify_ns, merkle_ns, reads in rows:
        print(
            f"| {size:,} | {math.log2(size):.1f} | {max(reads)} "
            f"| {micro(statistics.median(prove_ns))} / {micro(percentile(prove_ns, 0.99))} "
            f"| {micro(statistics.median(verify_ns))} / {micro(percentile(verify_ns, 0.99))} "
            f"| {micro(statistics.median(merkle_ns))} / {micro(percentile(merkle_ns, 0.99))} |"
        )
    if args.database:
        database_rows(args, entries, signer, key, rng)
    print()
    print("| tree size | leaf index | proof hashes | hash bytes | proof file bytes |")
    print("|---:|---:|---:|---:|---:|")
    for size, index, hashes, file_bytes in sizes_rows:
        print(f"| {size:,} | {index:,} | {hashes} | {hashes * merkle.HASH_SIZE} | {file_bytes} |")


def database_rows(args: argparse.Namespace, entries: list[bytes], signer: Signer, key: str, rng: random.Random) -> None:
    """The same tree in `merkle_nodes` (DatabaseNodeStore, one transaction per 50,000 leaves), proved from there."""
    from sqlalchemy import text

    from cds_service.database import make_engine, upgrade
    from cds_service.decision_log.transparency import DatabaseNodeStore

    engine = make_engine(args.database)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM merkle_nodes"))
    start = time.perf_counter_ns()
    for first in range(0, len(entries), 50_000):
        with engine.begin() as connection:
            merkle.append_many(DatabaseNodeStore(connection), entries[first : first + 50_000])
    fill_ns = time.perf_counter_ns() - start
    size = len(entries)
    with engine.connect() as connection:
        store = DatabaseNodeStore(connection)
        note = sign_checkpoint(ORIGIN, size, merkle.root(store, size), signer)
        prove_ns = []
        for index in [rng.randrange(size) for _ in range(args.samples)]:
            t0 = time.perf_counter_ns()
            text_ = prove(store, index, entries[index], note)
            prove_ns.append(time.perf_counter_ns() - t0)
            assert verify_proof(text_, key).index == index
    engine.dispose()
    print()
    print(f"database {engine.dialect.name}: {size:,} leaves stored in {fill_ns / 1e9:.1f} s")
    print("| tree size | prove from the database p50 / p99 (us) |")
    print("|---:|---:|")
    print(f"| {size:,} | {micro(statistics.median(prove_ns))} / {micro(percentile(prove_ns, 0.99))} |")


if __name__ == "__main__":
    main()
