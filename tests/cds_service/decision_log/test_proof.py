"""Proof files: every entry of a 10,000-leaf log proves, every edit fails, consistency across checkpoints,
and the standalone auditor's script agrees with the library."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cds_service.decision_log import merkle
from cds_service.decision_log.proof import (
    HEADER,
    STANDALONE_VERIFIER,
    ProofVerificationError,
    parse_proof,
    prove,
    verify_extension,
    verify_proof,
    write_proof,
)
from cds_service.decision_log.signed_note import Signer, sign_checkpoint

ORIGIN = "decisions.example.org/spine-cds"
SIZE = 10_000


def entry(i: int, fork: str = "") -> bytes:
    """About 100 bytes, like a decision's canonical JSON."""
    digest = hashlib.sha256(f"{fork}{i}".encode()).hexdigest()[:40]
    return f'{{"band":"likely","id":{i},"kind":"decision","model":"2.1.0","payload":"{digest}"}}'.encode()


def signer(seed: int, name: str = ORIGIN) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.to_bytes(4, "big")).digest()))


@dataclass(frozen=True)
class Log:
    store: merkle.MemoryNodeStore
    entries: list[bytes]
    signer: Signer
    checkpoint: str  # signed, at SIZE

    @property
    def key(self) -> str:
        return self.signer.verifier_key

    def note_at(self, size: int) -> str:
        return sign_checkpoint(ORIGIN, size, merkle.root(self.store, size), self.signer)


@pytest.fixture(scope="module")
def log() -> Log:
    store = merkle.MemoryNodeStore()
    entries = [entry(i) for i in range(SIZE)]
    for data in entries:
        merkle.append(store, data)
    key = signer(1)
    return Log(store, entries, key, sign_checkpoint(ORIGIN, SIZE, merkle.root(store), key))


StandaloneVerify = Callable[[str, str], Any]


@pytest.fixture(scope="module")
def standalone() -> StandaloneVerify:
    """The documented script's `verify(text, key)`, loaded as the auditor would run it (not as `__main__`)."""
    namespace: dict[str, Any] = {"__name__": "verify_proof"}
    exec(compile(STANDALONE_VERIFIER, "verify_proof.py", "exec"), namespace)
    verify: StandaloneVerify = namespace["verify"]
    return verify


def rejected_by_script(verify: Callable[..., Any], *arguments: Any) -> bool:
    try:
        verify(*arguments)
    except (SystemExit, Exception):  # the script exits on a failed check, or lets a decoding error rise
        return True
    return False


# --- every entry proves ----------------------------------------------------------------------------


def test_every_entry_of_a_10000_leaf_log_proves(log: Log, standalone: StandaloneVerify) -> None:
    for index in range(SIZE):
        text = prove(log.store, index, log.entries[index], log.checkpoint)
        verified = verify_proof(text, log.key, origin=ORIGIN)
        assert (verified.index, verified.tree_size, verified.origin, verified.entry) == (index, SIZE, ORIGIN, log.entries[index])
        assert verified.root_hash == merkle.root(log.store)
        if index % 10 == 0 or index >= SIZE - 20:
            assert standalone(text, log.key) == (ORIGIN, SIZE, index, log.entries[index])


def test_the_file_is_a_c2sp_tlog_proof(log: Log) -> None:
    text = prove(log.store, 1234, log.entries[1234], log.checkpoint)
    lines = text.split("\n")
    assert lines[0] == HEADER == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "extra " + base64.b64encode(log.entries[1234]).decode()
    assert lines[2] == "index 1234"
    path = merkle.inclusion_proof(log.store, 1234)
    assert lines[3 : 3 + len(path)] == [base64.b64encode(h).decode() for h in path]
    assert lines[3 + len(path)] == ""
    assert text.endswith("\n\n" + log.checkpoint)
    assert parse_proof(text).checkpoint_note == log.checkpoint


def test_proofs_against_older_checkpoints(log: Log) -> None:
    for size in (1, 2, 1000, 4096, 4097, 9999):
        note = log.note_at(size)
        for index in {0, size // 2, size - 1}:
            verified = verify_proof(prove(log.store, index, log.entries[index], note), log.key)
            assert (verified.index, verified.tree_size) == (index, size)


# --- edits -----------------------------------------------------------------------------------------


def _substitutes(c: str) -> list[str]:
    return ["B" if c == "A" else "A", " " if c == "\n" else "\n", "\u2014" if c != "\u2014" else "-"]


@pytest.mark.parametrize("index", [0, 4097, SIZE - 1])
def test_any_edit_anywhere_in_the_file_fails(log: Log, standalone: StandaloneVerify, index: int) -> None:
    """Every character substituted (three ways) or deleted, and a character inserted every few places: header,
    entry, index, proof hashes, blank line, checkpoint body and signature line alike."""
    text = prove(log.store, index, log.entries[index], log.checkpoint)
    edits: list[str] = []
    for position, c in enumerate(text):
        edits.extend(text[:position] + s + text[position + 1 :] for s in _substitutes(c))
        edits.append(text[:position] + text[position + 1 :])
        if position % 7 == 0:
            edits.append(text[:position] + "=" + text[position:])
    edits += [text + "\n", text + "x", text[:-1], "\n" + text, text.replace("\n", "\r\n")]
    survived = []
    for edited in edits:
        try:
            verify_proof(edited, log.key)
            survived.append(edited)
        except ProofVerificationError:
            pass
        if not rejected_by_script(standalone, edited, log.key):
            survived.append(edited)
    assert survived == []


def test_edits_to_each_part_fail_with_a_message_naming_it(log: Log) -> None:
    index = 777
    good = prove(log.store, index, log.entries[index], log.checkpoint)
    path = merkle.inclusion_proof(log.store, index)
    entry_line = "extra " + base64.b64encode(log.entries[index]).decode()

    def fails(text: str, message: str) -> None:
        with pytest.raises(ProofVerificationError, match=message):
            verify_proof(text, log.key)

    # the entry: other bytes, one flipped bit, cut short, another entry of the log
    flipped = bytearray(log.entries[index])
    flipped[10] ^= 1
    for other in (bytes(flipped), log.entries[index][:-1], log.entries[index + 1], b""):
        fails(good.replace(entry_line, "extra " + base64.b64encode(other).decode()), "not proved included")
    # the index
    for other_index in (index - 1, index + 1, index ^ 2, SIZE, SIZE + 5):
        fails(good.replace(f"index {index}\n", f"index {other_index}\n"), "not proved included")
    fails(good.replace(f"index {index}\n", f"index 0{index}\n"), "malformed proof")
    # the proof hashes: each one changed, dropped, duplicated, swapped, or one added
    for i in range(len(path)):
        changed = [*path]
        changed[i] = hashlib.sha256(changed[i]).digest()
        fails(write_proof(log.entries[index], index, changed, log.checkpoint), "not proved included")
        fails(write_proof(log.entries[index], index, path[:i] + path[i + 1 :], log.checkpoint), "not proved included")
    fails(write_proof(log.entries[index], index, [*path, path[-1]], log.checkpoint), "not proved included")
    fails(write_proof(log.entries[index], index, [path[1], path[0], *path[2:]], log.checkpoint), "not proved included")
    fails(
        write_proof(log.entries[index], index, merkle.inclusion_proof(log.store, index + 1), log.checkpoint),
        "not proved included",
    )
    # the checkpoint: body edited, another size or root, signed by another key, or by ours for another tree
    fails(good.replace(f"\n{SIZE}\n", f"\n{SIZE - 1}\n"), "checkpoint does not verify")
    fails(good.replace(f"{ORIGIN}\n", f"{ORIGIN}x\n", 1), "checkpoint does not verify")
    other_key = sign_checkpoint(ORIGIN, SIZE, merkle.root(log.store), signer(2))
    fails(write_proof(log.entries[index], index, path, other_key), "no signature by")
    other_tree = sign_checkpoint(ORIGIN, SIZE, hashlib.sha256(b"x").digest(), log.signer)
    fails(write_proof(log.entries[index], index, path, other_tree), "not proved included")
    fails(write_proof(log.entries[index], index, path, log.note_at(SIZE - 1)), "not proved included")
    fails(good.replace(HEADER, "c2sp.org/tlog-proof@v2"), "malformed proof")
    # the verifier: another key, another origin, not a key
    with pytest.raises(ProofVerificationError, match="no signature by"):
        verify_proof(good, signer(3).verifier_key)
    with pytest.raises(ProofVerificationError, match="is for"):
        verify_proof(good, log.key, origin="another.example/log")
    with pytest.raises(ProofVerificationError, match="verifier key"):
        verify_proof(good, "not a key")


def test_malformed_files_are_refused(log: Log) -> None:
    good = prove(log.store, 5, log.entries[5], log.checkpoint)
    for text in (
        "",
        "\n",
        HEADER,
        HEADER + "\n\n" + log.checkpoint,  # no index
        good.replace("index 5\n", "index five\n"),
        good.replace("index 5\n", "index -5\n"),
        good.replace("index 5\n", "index  5\n"),
        good.replace("extra ", "extra  "),
        good.split("\n\n")[0],
        good.replace("\n\n", "\n", 1),
        write_proof(log.entries[5], 5, [b"\x00" * 32] * 65, log.checkpoint),
    ):
        with pytest.raises(ProofVerificationError):
            verify_proof(text, log.key)
    with pytest.raises(ProofVerificationError, match="UTF-8"):
        verify_proof(b"\xff" + good.encode(), log.key)
    assert verify_proof(good.encode(), log.key).index == 5


def test_a_proof_without_the_entry_verifies_with_the_entry_given(log: Log) -> None:
    path = merkle.inclusion_proof(log.store, 42)
    detached = write_proof(None, 42, path, log.checkpoint)
    assert not detached.split("\n")[1].startswith("extra")
    assert verify_proof(detached, log.key, entry=log.entries[42]).entry == log.entries[42]
    with pytest.raises(ProofVerificationError, match="no entry"):
        verify_proof(detached, log.key)
    with pytest.raises(ProofVerificationError, match="not proved included"):
        verify_proof(detached, log.key, entry=log.entries[43])
    attached = write_proof(log.entries[42], 42, path, log.checkpoint)
    assert verify_proof(attached, log.key, entry=log.entries[42]).index == 42
    with pytest.raises(ProofVerificationError, match="not the entry in the proof"):
        verify_proof(attached, log.key, entry=log.entries[43])


def test_the_log_refuses_to_write_a_proof_that_cannot_verify(log: Log) -> None:
    with pytest.raises(ValueError, match="not the entry stored"):
        prove(log.store, 3, log.entries[4], log.checkpoint)
    with pytest.raises(ValueError, match="not the stored tree's root"):
        prove(log.store, 3, log.entries[3], sign_checkpoint(ORIGIN, SIZE, hashlib.sha256(b"x").digest(), log.signer))
    with pytest.raises(ValueError):
        prove(log.store, SIZE, b"", log.checkpoint)
    with pytest.raises(ValueError):
        write_proof(b"", -1, [], log.checkpoint)
    with pytest.raises(ValueError):
        write_proof(b"", 0, [b"short"], log.checkpoint)


# --- consistency between checkpoints ----------------------------------------------------------------


def test_a_later_checkpoint_extends_an_earlier_one(log: Log) -> None:
    new = log.checkpoint
    for old_size in (1, 2, 3, 4096, 6000, 9999, SIZE):
        old = log.note_at(old_size)
        proof = merkle.consistency_proof(log.store, old_size, SIZE)
        earlier, later = verify_extension(old, new, proof, log.key, origin=ORIGIN)
        assert (earlier.size, later.size) == (old_size, SIZE)
    middle = log.note_at(6000)
    verify_extension(log.note_at(4000), middle, merkle.consistency_proof(log.store, 4000, 6000), log.key)
    # not backwards, not with another pair's proof, not across keys or origins
    with pytest.raises(ProofVerificationError, match="does not extend"):
        verify_extension(new, middle, merkle.consistency_proof(log.store, 6000, SIZE), log.key)
    with pytest.raises(ProofVerificationError, match="does not extend"):
        verify_extension(middle, new, merkle.consistency_proof(log.store, 5999, SIZE), log.key)
    with pytest.raises(ProofVerificationError, match="a checkpoint does not verify"):
        verify_extension(middle, new, merkle.consistency_proof(log.store, 6000, SIZE), signer(2).verifier_key)
    other_log = sign_checkpoint("other.example/log", SIZE, merkle.root(log.store), log.signer)
    with pytest.raises(ProofVerificationError, match="two logs"):
        verify_extension(middle, other_log, merkle.consistency_proof(log.store, 6000, SIZE), log.key)


def test_a_truncated_and_regrown_log_is_not_an_extension(log: Log) -> None:
    """The log is cut back to 4,000 entries and grows again to 12,000 with other entries: the checkpoint
    signed at 6,000 before the cut has no consistency proof to any later checkpoint of the new tree."""
    forked = merkle.MemoryNodeStore()
    merkle.append_many(forked, log.entries[:4000])
    merkle.append_many(forked, (entry(i, fork="rewritten") for i in range(4000, 12_000)))
    regrown = sign_checkpoint(ORIGIN, 12_000, merkle.root(forked), log.signer)
    old = log.note_at(6000)
    for proof in (
        merkle.consistency_proof(forked, 6000, 12_000),
        merkle.consistency_proof(forked, 4000, 12_000),
        merkle.consistency_proof(log.store, 6000, SIZE),
        [],
    ):
        with pytest.raises(ProofVerificationError, match="does not extend"):
            verify_extension(old, regrown, proof, log.key)
    # the shared prefix is still consistent: the check is about the rewritten entries, not the fork as such
    verify_extension(log.note_at(4000), regrown, merkle.consistency_proof(forked, 4000, 12_000), log.key)
    # and an old inclusion proof of a rewritten entry does not verify against the new checkpoint
    old_path = merkle.inclusion_proof(log.store, 5000, 6000)
    with pytest.raises(ProofVerificationError, match="not proved included"):
        verify_proof(write_proof(log.entries[5000], 5000, old_path, regrown), log.key)


# --- the standalone script as an auditor runs it ----------------------------------------------------


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "verify_proof.py"
    path.write_text(STANDALONE_VERIFIER, encoding="utf-8")
    yield path


def test_the_standalone_script_verifies_a_proof_file(log: Log, script: Path, tmp_path: Path) -> None:
    proof_file = tmp_path / "entry-9876.tlog-proof"
    proof_file.write_bytes(prove(log.store, 9876, log.entries[9876], log.checkpoint).encode("utf-8"))
    done = subprocess.run([sys.executable, str(script), str(proof_file), log.key], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"verified: entry 9876 of {ORIGIN} at tree size {SIZE}",
        base64.b64encode(log.entries[9876]).decode(),
    ]


def test_the_standalone_script_rejects_an_edited_file_and_a_wrong_key(log: Log, script: Path, tmp_path: Path) -> None:
    proof_file = tmp_path / "entry.tlog-proof"
    text = prove(log.store, 9876, log.entries[9876], log.checkpoint)
    for content, key in (
        (text.replace("index 9876", "index 9875"), log.key),
        (text.replace("\n", "\r\n"), log.key),  # read as bytes: a newline translation cannot hide this
        (text, signer(2).verifier_key),
        (text, "garbage"),
    ):
        proof_file.write_bytes(content.encode("utf-8"))
        done = subprocess.run([sys.executable, str(script), str(proof_file), key], capture_output=True, text=True, check=False)
        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr.startswith("proof rejected: ")


def consistency_file(old: str, new: str, proof: list[bytes]) -> dict[str, Any]:
    """What `spine-cds audit consistency` writes (transparency.consistency_file), as the script reads it."""
    return {"old": old, "new": new, "proof": [h.hex() for h in proof]}


@pytest.fixture(scope="module")
def standalone_consistency() -> Callable[..., Any]:
    namespace: dict[str, Any] = {"__name__": "verify_proof"}
    exec(compile(STANDALONE_VERIFIER, "verify_proof.py", "exec"), namespace)
    verify: Callable[..., Any] = namespace["verify_consistency"]
    return verify


def test_the_standalone_script_agrees_with_the_library_on_consistency_for_every_pair_of_sizes(
    standalone_consistency: Callable[..., Any],
) -> None:
    store, key = merkle.MemoryNodeStore(), signer(3)
    merkle.append_many(store, (entry(i) for i in range(40)))
    notes = {size: sign_checkpoint(ORIGIN, size, merkle.root(store, size), key) for size in range(1, 41)}
    for old_size in range(1, 41):
        for new_size in range(old_size, 41):
            proof = merkle.consistency_proof(store, old_size, new_size)
            document = consistency_file(notes[old_size], notes[new_size], proof)
            assert standalone_consistency(document, key.verifier_key) == (ORIGIN, old_size, new_size)
            verify_extension(notes[old_size], notes[new_size], proof, key.verifier_key)
            for position in range(len(proof)):  # any one hash changed, the library and the script both refuse
                bent = [*proof[:position], bytes([proof[position][0] ^ 1]) + proof[position][1:], *proof[position + 1 :]]
                assert rejected_by_script(
                    standalone_consistency, consistency_file(notes[old_size], notes[new_size], bent), key.verifier_key
                )
                with pytest.raises(ProofVerificationError):
                    verify_extension(notes[old_size], notes[new_size], bent, key.verifier_key)
            if new_size > old_size:  # a hash too many, too few, or the pair the other way round
                for wrong in (consistency_file(notes[old_size], notes[new_size], [*proof, proof[-1]]),
                              consistency_file(notes[old_size], notes[new_size], proof[:-1]),
                              consistency_file(notes[new_size], notes[old_size], proof)):  # fmt: skip
                    assert rejected_by_script(standalone_consistency, wrong, key.verifier_key)


def test_the_standalone_script_refuses_a_regrown_log_another_key_and_a_checkpoint_not_kept(
    log: Log, standalone_consistency: Callable[..., Any]
) -> None:
    kept = log.note_at(6000)
    good = consistency_file(kept, log.checkpoint, merkle.consistency_proof(log.store, 6000, SIZE))
    assert standalone_consistency(good, log.key, kept) == (ORIGIN, 6000, SIZE)
    forked = merkle.MemoryNodeStore()
    merkle.append_many(forked, log.entries[:4000])
    merkle.append_many(forked, (entry(i, fork="rewritten") for i in range(4000, 12_000)))
    regrown = sign_checkpoint(ORIGIN, 12_000, merkle.root(forked), log.signer)
    for document, key, kept_note in (
        (consistency_file(kept, regrown, merkle.consistency_proof(forked, 6000, 12_000)), log.key, None),
        (consistency_file(kept, regrown, merkle.consistency_proof(forked, 4000, 12_000)), log.key, None),
        (good, signer(2).verifier_key, None),
        (good, log.key, log.note_at(5999)),  # the file starts from another checkpoint than the one kept
        ({**good, "proof": [h.upper() for h in good["proof"]]}, log.key, None),  # hex in one spelling only
        ({**good, "new": sign_checkpoint("other.example/log", SIZE, merkle.root(log.store), log.signer)}, log.key, None),
    ):
        assert rejected_by_script(standalone_consistency, document, key, kept_note)


def test_the_standalone_script_checks_a_consistency_file_from_the_command_line(log: Log, script: Path, tmp_path: Path) -> None:
    kept = tmp_path / "checkpoint-6000.note"
    kept.write_bytes(log.note_at(6000).encode("utf-8"))
    document = tmp_path / "consistency-6000.json"
    document.write_text(
        json.dumps(consistency_file(log.note_at(6000), log.checkpoint, merkle.consistency_proof(log.store, 6000, SIZE)))
    )
    run = [sys.executable, str(script), str(document), log.key, str(kept)]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"verified: {ORIGIN}'s log of {SIZE} entries extends its log of 6000 entries\n"
    kept.write_bytes(log.note_at(5000).encode("utf-8"))
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.startswith("proof rejected: it does not start from the checkpoint you kept")


def test_the_standalone_script_is_short() -> None:
    body = ast.get_docstring(ast.parse(STANDALONE_VERIFIER), clean=False) or ""
    code = [
        line for line in STANDALONE_VERIFIER.replace(body, "").splitlines() if line.strip() and not line.startswith(("#", '"""'))
    ]
    assert len(code) <= 95
    assert {line.split()[1] for line in code if line.startswith(("import ", "from "))} <= {
        "base64,",
        "cryptography.hazmat.primitives.asymmetric.ed25519",
    }
