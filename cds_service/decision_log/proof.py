"""Self-contained proofs that a decision-log entry is in the log, for auditors who verify offline.

A proof file is a C2SP tlog-proof (C2SP/C2SP repository, file tlog-proof.md; c2sp.org/tlog-proof),
with the entry's canonical bytes as the format's optional extra data:

    c2sp.org/tlog-proof@v1
    extra <base64 of the entry's canonical bytes>
    index <zero-based leaf index, decimal, no leading zeroes>
    <base64 inclusion proof hash, from the leaf's sibling up to the root's child, one a line>
    ...
    <empty line>
    <the signed checkpoint note, verbatim (c2sp.org/tlog-checkpoint, c2sp.org/signed-note)>

Why `extra` and not a wrapper: the spec defines the extra line as opaque data with application-specific
meaning and names "additional data necessary to reconstruct the record hash" among its uses; the entry
is exactly that (its leaf hash is SHA-256(0x00 || entry), RFC 9162 2.1.1). The spec says applications
MUST NOT implicitly trust the extra data, and nothing here does: the entry counts only once its leaf
hash has been proved included under a checkpoint the verifier key signed. So the file stays a plain
tlog-proof that any implementation of the format reads (a verifier that already holds the entry can
ignore the extra line), and no second envelope format is needed. `verify_proof` also takes the entry
separately (`entry=`), for a proof written without it, as the spec's detached-signature use has it.

Verifying a proof is four steps: the checkpoint note's signature by the log's key (and, if asked, its
origin), the entry's leaf hash, the RFC 9162 2.1.3.2 inclusion check against the checkpoint's size and
root, and that every piece of the file is in canonical form. `STANDALONE_VERIFIER` is the same check, and
that of `verify_extension`, as a short script using only the standard library and `cryptography`, for an
auditor who runs nothing of this project; the tests run it against real proof and consistency files.

`verify_extension` checks a consistency proof (RFC 9162 2.1.4.2) between two signed checkpoints: the
newer tree extends the older one, so no entry of the older was changed, dropped or reordered.

Every verification failure raises `ProofVerificationError`, its message naming what failed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cds_service.decision_log import merkle
from cds_service.decision_log.signed_note import (
    Checkpoint,
    Verifier,
    decode_base64,
    encode_base64,
    parse_checkpoint,
    parse_note,
    verify_checkpoint,
)

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 64  # the height of a tree of 2^64 leaves
_INDEX = re.compile(r"index (0|[1-9][0-9]*)")


class ProofVerificationError(ValueError):
    """A proof that does not verify, or is not a proof; the message says which part failed."""


@dataclass(frozen=True)
class ParsedProof:
    """The parts of a tlog-proof file, read for their form only (nothing verified)."""

    extra: bytes | None
    index: int
    hashes: tuple[bytes, ...]
    checkpoint_note: str


@dataclass(frozen=True)
class VerifiedProof:
    """What a verified proof establishes: `entry` is leaf `index` of the log `origin` at `tree_size`."""

    index: int
    tree_size: int
    root_hash: bytes
    origin: str
    entry: bytes
    checkpoint: Checkpoint


def write_proof(entry: bytes | None, index: int, inclusion_proof: Sequence[bytes], signed_checkpoint: str) -> str:
    """The tlog-proof text for leaf `index` (with the entry as extra data unless `entry` is None)."""
    if index < 0:
        raise ValueError(f"a leaf index is not negative: {index}")
    if any(len(digest) != merkle.HASH_SIZE for digest in inclusion_proof):
        raise ValueError(f"inclusion proof hashes are {merkle.HASH_SIZE} bytes")
    if not signed_checkpoint.endswith("\n"):
        raise ValueError("a signed checkpoint ends in a newline")
    lines = [HEADER]
    if entry is not None:
        lines.append(f"extra {encode_base64(entry)}")
    lines.append(f"index {index}")
    lines.extend(encode_base64(digest) for digest in inclusion_proof)
    return "\n".join(lines) + "\n\n" + signed_checkpoint


def prove(store: merkle.NodeStore, index: int, entry: bytes, signed_checkpoint: str) -> str:
    """The proof file of leaf `index` under `signed_checkpoint`, computed from the log's own tree.

    Refuses (`ValueError`) to write a proof that cannot verify: the entry's leaf hash must be the stored
    leaf, and the checkpoint's root the stored tree's root at its size. The signature is not checked:
    this is the log's side, which signed it.
    """
    text, _ = parse_note(signed_checkpoint)
    checkpoint = parse_checkpoint(text)
    if merkle.root(store, checkpoint.size) != checkpoint.root_hash:
        raise ValueError(f"the checkpoint's root is not the stored tree's root at size {checkpoint.size}")
    path = merkle.inclusion_proof(store, index, checkpoint.size)
    if store.get_many([(0, index)])[0] != merkle.leaf_hash(entry):
        raise ValueError(f"these bytes are not the entry stored at leaf {index}")
    return write_proof(entry, index, path, signed_checkpoint)


def parse_proof(text: str | bytes) -> ParsedProof:
    """Split a tlog-proof file into its parts; `ProofVerificationError` if it is not of that form."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProofVerificationError("malformed proof: not UTF-8") from None
    head, blank, note = text.partition("\n\n")  # the proof lines never hold an empty line: the first ends them
    lines = head.split("\n")
    if not blank or lines[0] != HEADER:
        raise ProofVerificationError(f"malformed proof: the first line is not {HEADER!r}, or no empty line before the checkpoint")
    position = 1
    extra = None
    try:
        if len(lines) > position and lines[position].startswith("extra "):
            extra = decode_base64(lines[position][len("extra ") :])
            position += 1
        found = _INDEX.fullmatch(lines[position]) if len(lines) > position else None
        if not found:
            raise ProofVerificationError("malformed proof: no 'index N' line")
        hashes = tuple(decode_base64(line) for line in lines[position + 1 :])
    except ValueError as exc:
        if isinstance(exc, ProofVerificationError):
            raise
        raise ProofVerificationError(f"malformed proof: a line is {exc}") from None
    if len(hashes) > MAX_PROOF_HASHES or any(len(digest) != merkle.HASH_SIZE for digest in hashes):
        raise ProofVerificationError(f"malformed proof: at most {MAX_PROOF_HASHES} hashes of {merkle.HASH_SIZE} bytes")
    return ParsedProof(extra, int(found.group(1)), hashes, note)


def verify_proof(
    text: str | bytes, verifier: Verifier | str, *, origin: str | None = None, entry: bytes | None = None
) -> VerifiedProof:
    """Verify a proof file against the log's verifier key (and origin, when given).

    The entry is the file's extra data; `entry=` supplies it for a file without one, or must equal it.
    Raises `ProofVerificationError` on any failure.
    """
    parsed = parse_proof(text)
    try:
        checkpoint = verify_checkpoint(parsed.checkpoint_note, verifier, origin=origin)
    except ValueError as exc:  # NoteError, or a verifier key that is not one
        raise ProofVerificationError(f"the checkpoint does not verify: {exc}") from exc
    proved = parsed.extra if parsed.extra is not None else entry
    if proved is None:
        raise ProofVerificationError("the proof carries no entry and none was given")
    if entry is not None and proved != entry:
        raise ProofVerificationError("the entry given is not the entry in the proof")
    try:
        merkle.verify_inclusion(merkle.leaf_hash(proved), parsed.index, checkpoint.size, parsed.hashes, checkpoint.root_hash)
    except merkle.MerkleProofError as exc:
        raise ProofVerificationError(f"the entry is not proved included: {exc}") from exc
    return VerifiedProof(parsed.index, checkpoint.size, checkpoint.root_hash, checkpoint.origin, proved, checkpoint)


def verify_extension(
    old_note: str | bytes,
    new_note: str | bytes,
    consistency_proof: Sequence[bytes],
    verifier: Verifier | str,
    *,
    origin: str | None = None,
) -> tuple[Checkpoint, Checkpoint]:
    """Check that the tree of the signed checkpoint `new_note` extends the one of `old_note` (RFC 9162 2.1.4.2).

    Both must be signed by `verifier` for the same origin. Returns (old, new); raises `ProofVerificationError`.
    """
    try:
        old = verify_checkpoint(old_note, verifier, origin=origin)
        new = verify_checkpoint(new_note, verifier, origin=origin)
    except ValueError as exc:  # NoteError, or a verifier key that is not one
        raise ProofVerificationError(f"a checkpoint does not verify: {exc}") from exc
    if old.origin != new.origin:
        raise ProofVerificationError(f"the checkpoints are of two logs: {old.origin!r} and {new.origin!r}")
    try:
        merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, consistency_proof)
    except merkle.MerkleProofError as exc:
        raise ProofVerificationError(f"the tree of size {new.size} does not extend the tree of size {old.size}: {exc}") from exc
    return old, new


# The same verification as `verify_proof` and `verify_extension`, for an auditor with Python 3 and
# `cryptography` only. Kept short on purpose; the tests run it on real files and on tampered ones.
STANDALONE_VERIFIER = r'''"""Verify the decision log's proofs offline, with Python 3 and `cryptography` only.

  python3 verify_proof.py PROOF_FILE VERIFIER_KEY
      a c2sp.org/tlog-proof@v1 whose extra line is the log entry: prints the entry's index, the tree
      size and origin, then the entry in base64
  python3 verify_proof.py CONSISTENCY_FILE VERIFIER_KEY [KEPT_CHECKPOINT]
      the JSON of `spine-cds audit consistency`: the newer checkpoint's log extends the older one's,
      and the older one is exactly the checkpoint you kept

The key is name+keyid+base64. Exits 1 on any failure.
"""
import base64, hashlib, json, re, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

def check(ok, what):
    if not ok:
        sys.exit(f"proof rejected: {what}")

def b64(text):  # canonical base64 only, so that no edit goes unseen
    raw = base64.b64decode(text, validate=True)
    check(base64.b64encode(raw).decode() == text, "non-canonical base64")
    return raw

def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()

def checkpoint(note, vkey):  # the origin, size and root of a note signed by the key
    name, key_id, key = vkey.split("+", 2)
    key = b64(key)
    check(len(key) == 33 and key[0] == 1 and sha256(name.encode(), b"\n", key)[:4].hex() == key_id, "verifier key")
    check(note.endswith("\n") and not re.search(r"[\x00-\x09\x0b-\x1f]", note), "note characters")
    body, _, signatures = note.rpartition("\n\n")  # signed text = body + "\n"
    signed = False
    for line in signatures[:-1].split("\n"):
        check(line.startswith("\u2014 "), "signature line")
        signer, signature = line[2:].split(" ")
        signature = b64(signature)
        if signer == name and signature[:4].hex() == key_id:  # every line by the key must verify
            Ed25519PublicKey.from_public_bytes(key[1:]).verify(signature[4:], (body + "\n").encode())
            signed = True
    check(signed, "no signature by the verifier key")
    origin, size, root = body.split("\n")[:3]
    check(origin and all(body.split("\n")) and re.fullmatch(r"0|[1-9][0-9]*", size), "checkpoint")
    root = b64(root)
    check(len(root) == 32, "root hash")
    return origin, int(size), root

def verify(text, vkey):
    head, _, note = text.partition("\n\n")  # proof lines, then the checkpoint note
    lines = head.split("\n")
    check(len(lines) >= 3 and lines[0] == "c2sp.org/tlog-proof@v1" and lines[1].startswith("extra "), "header")
    check(re.fullmatch(r"index (0|[1-9][0-9]*)", lines[2]), "index line")
    entry, index, path = b64(lines[1][6:]), int(lines[2][6:]), [b64(line) for line in lines[3:]]
    origin, size, root = checkpoint(note, vkey)
    check(index < size and all(len(p) == 32 for p in path), "sizes")
    fn, sn, r = index, size - 1, sha256(b"\0", entry)  # RFC 9162 2.1.3.2
    for p in path:
        check(sn > 0, "inclusion proof too long")
        if fn & 1 or fn == sn:
            r = sha256(b"\1", p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = sha256(b"\1", r, p)
        fn, sn = fn >> 1, sn >> 1
    check(sn == 0 and r == root, "inclusion proof")
    return origin, size, index, entry

def verify_consistency(document, vkey, kept=None):
    check(kept is None or kept == document["old"], "it does not start from the checkpoint you kept")
    (origin, first, old_root), (other, second, new_root) = checkpoint(document["old"], vkey), checkpoint(document["new"], vkey)
    check(all(re.fullmatch(r"[0-9a-f]{64}", h) for h in document["proof"]), "proof hashes")
    path = [bytes.fromhex(h) for h in document["proof"]]
    check(origin == other and 0 < first <= second, "checkpoints of one log, the older first")
    if first == second:
        check(not path and old_root == new_root, "consistency proof")
        return origin, first, second
    check(path, "empty consistency proof")  # RFC 9162 2.1.4.2
    path = [old_root] + path if first & (first - 1) == 0 else path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        check(sn > 0, "consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = sha256(b"\1", c, fr), sha256(b"\1", c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = sha256(b"\1", sr, c)
        fn, sn = fn >> 1, sn >> 1
    check(sn == 0 and fr == old_root and sr == new_root, "consistency proof")
    return origin, first, second

def read(path):  # bytes: no newline translation may hide an edit
    with open(path, "rb") as file:
        return file.read().decode("utf-8")

if __name__ == "__main__":
    try:
        text = read(sys.argv[1])
        if text.startswith("{"):
            kept = read(sys.argv[3]) if len(sys.argv) > 3 else None
            origin, first, second = verify_consistency(json.loads(text), sys.argv[2], kept)
            print(f"verified: {origin}'s log of {second} entries extends its log of {first} entries")
        else:
            origin, size, index, entry = verify(text, sys.argv[2])
            print(f"verified: entry {index} of {origin} at tree size {size}")
            print(base64.b64encode(entry).decode())
    except Exception as exc:
        sys.exit(f"proof rejected: {type(exc).__name__} {exc}")
'''
