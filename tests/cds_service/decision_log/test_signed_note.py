"""C2SP signed notes and checkpoints: published vectors, round trips, wrong keys, tampering, malformed notes."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cds_service.decision_log.merkle import EMPTY_ROOT
from cds_service.decision_log.signed_note import (
    BadSignatureError,
    Checkpoint,
    KeyFormatError,
    MalformedNoteError,
    NoteError,
    OriginMismatchError,
    Signer,
    UnknownKeyError,
    Verifier,
    key_id,
    load_signer,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)

# Vectors from golang.org/x/mod/sumdb/note (golang/mod, sumdb/note/note_test.go: TestNewVerifier,
# TestSign, TestOpen). PETER_SKEY is that package's private key text: "PRIVATE+KEY+<name>+<key ID>+
# base64(0x01 || Ed25519 seed)".
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

# The examples of the specifications (C2SP/C2SP signed-note.md and tlog-checkpoint.md); their public keys
# are not published, so only their form is checked.
SPEC_NOTE = (
    "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n\n"
    "\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

ORIGIN = "decisions.example.org/spine-cds"
ROOT = hashlib.sha256(b"some root").digest()


def peter_signer() -> Signer:
    encoded = PETER_SKEY.split("+", 4)[4]
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01
    return Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(raw[1:]))


def seeded_signer(name: str, seed: int) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.to_bytes(4, "big")).digest()))


LOG = seeded_signer(ORIGIN, 1)
OTHER = seeded_signer("witness.example.org", 2)
THIRD = seeded_signer("third.example", 3)


# --- key IDs and verifier keys ---------------------------------------------------------------------


def test_the_key_id_of_the_published_verifier_key() -> None:
    verifier = parse_verifier_key(PETER_VKEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id == 0xC74F20A3
    # SHA-256(key name || 0x0A || 0x01 || public key)[:4], big-endian (c2sp.org/signed-note, Ed25519 signatures)
    raw = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    assert key_id("PeterNeumann", raw[1:]) == 0xC74F20A3
    assert hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4] == bytes.fromhex("c74f20a3")
    assert verifier.key == PETER_VKEY
    assert peter_signer().verifier_key == PETER_VKEY
    assert parse_verifier_key(ENOCH_VKEY).key_id == 0xAF0CFE78


def test_a_mangled_verifier_key_is_refused() -> None:
    """As golang.org/x/mod/sumdb/note's TestNewVerifier: every part of the key, and every one-byte change, fails."""
    for start in range(len(PETER_VKEY)):
        for end in range(start + 1, len(PETER_VKEY) + 1):
            if (start, end) != (0, len(PETER_VKEY)):
                with pytest.raises(KeyFormatError):
                    parse_verifier_key(PETER_VKEY[start:end])
    for position in range(len(PETER_VKEY)):
        changed = PETER_VKEY[:position] + chr(ord(PETER_VKEY[position]) + 1) + PETER_VKEY[position + 1 :]
        with pytest.raises(KeyFormatError):
            parse_verifier_key(changed)
    for bad in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # wrong length (Go's vector)
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown algorithm (Go's vector)
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # the key ID is written in lowercase
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
    ):
        with pytest.raises(KeyFormatError):
            parse_verifier_key(bad)


def test_a_verifier_key_whose_base64_holds_a_plus_round_trips() -> None:
    """The name and key ID hold no '+', but base64 may: only the first two '+' separate the fields."""
    signer = next(s for s in (seeded_signer(ORIGIN, seed) for seed in range(100, 200)) if "+" in s.verifier_key.split("+", 2)[2])
    assert parse_verifier_key(signer.verifier_key) == signer.verifier
    note = sign_checkpoint(ORIGIN, 3, ROOT, signer)
    assert verify_checkpoint(note, signer.verifier_key).size == 3


def test_key_names_are_checked() -> None:
    for name in ("", "a+b", "a b", "a\u00a0b", "a\tb", "a\nb"):
        with pytest.raises(KeyFormatError):
            Signer(name, Ed25519PrivateKey.generate())
        with pytest.raises(KeyFormatError):
            Verifier(name, bytes(32))
    with pytest.raises(KeyFormatError):
        Verifier("ok", bytes(31))


# --- the published notes ---------------------------------------------------------------------------


def test_signing_reproduces_the_published_signature() -> None:
    # Ed25519 is deterministic: the same key and text give golang.org/x/mod/sumdb/note's TestSign output
    assert sign_note(TEXT, peter_signer()) == TEXT + "\n" + PETER_SIG


def test_opening_the_published_notes() -> None:
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(note, PETER_VKEY) == TEXT
    assert open_note(note, ENOCH_VKEY) == TEXT  # the other line is by a key unknown to this verifier
    assert open_note(note.encode("utf-8"), parse_verifier_key(ENOCH_VKEY)) == TEXT
    with pytest.raises(UnknownKeyError):
        open_note(TEXT + "\n" + PETER_SIG, ENOCH_VKEY)
    # Go's "invalid signature": four characters inserted into the signature
    with pytest.raises(BadSignatureError):
        open_note(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], PETER_VKEY)
    # Go's malformed messages
    for bad in (
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT
        + "\n"
        + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ):
        with pytest.raises(MalformedNoteError):
            open_note(bad, PETER_VKEY)
    with pytest.raises(MalformedNoteError):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode("utf-8"), PETER_VKEY)


def test_the_text_ends_at_the_last_blank_line() -> None:
    text, signatures = parse_note(SPEC_NOTE)
    assert text == "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n"
    assert [(s.name, len(s.signature)) for s in signatures] == [("quasimodo.example/salvatore", 64)]


def test_the_published_checkpoint_parses() -> None:
    text, signatures = parse_note(SPEC_CHECKPOINT)
    checkpoint = parse_checkpoint(text)
    assert (checkpoint.origin, checkpoint.size, checkpoint.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.body == text
    assert [s.name for s in signatures] == ["example.com/behind-the-sofa"]


# --- checkpoints: round trips, keys, tampering ------------------------------------------------------


def test_a_checkpoint_round_trips() -> None:
    note = sign_checkpoint(ORIGIN, 1234, ROOT, LOG)
    body = f"{ORIGIN}\n1234\n{base64.b64encode(ROOT).decode()}\n"
    assert note.startswith(body + "\n\u2014 " + ORIGIN + " ")
    assert verify_checkpoint(note, LOG.verifier_key) == Checkpoint(ORIGIN, 1234, ROOT)
    assert verify_checkpoint(note, LOG.verifier, origin=ORIGIN).size == 1234
    signature = base64.b64decode(note.rsplit(" ", 1)[1])
    assert (signature[:4], len(signature)) == (LOG.verifier.key_id.to_bytes(4, "big"), 68)

    empty = sign_checkpoint(ORIGIN, 0, EMPTY_ROOT, LOG)
    assert verify_checkpoint(empty, LOG.verifier_key) == Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    extended = sign_checkpoint(ORIGIN, 7, ROOT, LOG, extensions=["ext one", "ext two"])
    assert verify_checkpoint(extended, LOG.verifier_key).extensions == ("ext one", "ext two")


def test_a_wrong_key_is_an_unknown_key() -> None:
    note = sign_checkpoint(ORIGIN, 5, ROOT, LOG)
    with pytest.raises(UnknownKeyError):
        verify_checkpoint(note, OTHER.verifier_key)
    same_name = seeded_signer(ORIGIN, 99)  # same name, another key: another key ID
    with pytest.raises(UnknownKeyError):
        verify_checkpoint(note, same_name.verifier_key)
    # a line with the key's name but another key ID is someone else's and ignored
    impostor = sign_note(Checkpoint(ORIGIN, 5, ROOT).body, same_name)
    with pytest.raises(UnknownKeyError):
        verify_checkpoint(impostor, LOG.verifier_key)


def test_an_altered_body_fails_the_signature() -> None:
    note = sign_checkpoint(ORIGIN, 5, ROOT, LOG)
    body, signatures = note.split("\n\n")
    altered = [
        body.replace("\n5\n", "\n6\n"),
        body.replace(ORIGIN, ORIGIN + "x"),
        body.replace(base64.b64encode(ROOT).decode(), base64.b64encode(EMPTY_ROOT).decode()),
        body + "\nan extension",
    ]
    for changed in altered:
        with pytest.raises(BadSignatureError):
            verify_checkpoint(changed + "\n\n" + signatures, LOG.verifier_key)
    other_sig = sign_checkpoint(ORIGIN, 6, ROOT, LOG).split("\n\n")[1]
    with pytest.raises(BadSignatureError):
        verify_checkpoint(body + "\n\n" + other_sig, LOG.verifier_key)


def test_signature_lines_by_other_keys_are_ignored() -> None:
    body = Checkpoint(ORIGIN, 9, ROOT).body
    note = sign_note(body, OTHER, LOG, THIRD)
    garbage = "\u2014 unknown.example " + base64.b64encode(b"\x00\x00\x00\x01" + b"x" * 64).decode() + "\n"
    for candidate in (note, note + garbage, sign_note(body, THIRD) + LOG.signature_line(body)):
        assert verify_checkpoint(candidate, LOG.verifier_key).size == 9
    assert verify_checkpoint(note, OTHER.verifier_key).size == 9
    # a failing signature by the known key rejects the note, even beside a good one (c2sp.org/signed-note: SHOULD)
    bad_line = LOG.signature_line(body.replace("9", "8"))
    with pytest.raises(BadSignatureError):
        verify_checkpoint(note + bad_line, LOG.verifier_key)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def non_canonical(encoded: str) -> str:
    """The same bytes with an unused low bit of the last base64 character set (32 bytes leave two unused bits)."""
    assert encoded.endswith("=") and not encoded.endswith("==")
    changed = encoded[:-2] + ALPHABET[ALPHABET.index(encoded[-2]) | 1] + "="
    assert changed != encoded and base64.b64decode(changed) == base64.b64decode(encoded)
    return changed


def test_malformed_checkpoints_are_refused() -> None:
    root64 = base64.b64encode(ROOT).decode()
    for text in (
        f"{ORIGIN}\n5\n",
        f"{ORIGIN}\n05\n{root64}\n",
        f"{ORIGIN}\n-5\n{root64}\n",
        f"{ORIGIN}\n+5\n{root64}\n",
        f"{ORIGIN}\n 5\n{root64}\n",
        f"{ORIGIN}\n\u0665\n{root64}\n",  # a Unicode digit
        f"{ORIGIN}\n{2**64}\n{root64}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n5\n{root64[:-2]}\n",
        f"{ORIGIN}\n5\n{non_canonical(root64)}\n",
        f"{ORIGIN}\n5\n{root64}\n\next\n",  # an empty extension line
        f"\n5\n{root64}\n",
    ):
        note = text + "\n" + LOG.signature_line(text)
        with pytest.raises(MalformedNoteError):
            verify_checkpoint(note, LOG.verifier_key)


def test_malformed_notes_are_refused() -> None:
    note = sign_checkpoint(ORIGIN, 5, ROOT, LOG)
    body, line = note.split("\n\n")
    for bad in (
        body + "\n" + line,  # no blank line
        body + "\n\n",  # no signature line
        note[:-1],  # no final newline
        note.replace("\u2014 ", "- "),
        note.replace("\u2014 ", "\u2014"),
        note.replace("\u2014 ", "\u2013 "),  # en dash
        note.replace(f"\u2014 {ORIGIN} ", f"\u2014 {ORIGIN}+x "),
        note.replace(f"\u2014 {ORIGIN} ", f"\u2014 {ORIGIN}  "),
        note[:-2] + "\n",  # base64 cut short
        note[:-1] + "\r\n",
        note.replace("\n5\n", "\n5\t\n"),
        body + "\n\n\u2014 " + ORIGIN + " AAAA\n",  # shorter than a key ID and one byte
        body + "\n\n\u2014 " + ORIGIN + "\n",
    ):
        with pytest.raises(MalformedNoteError):
            verify_checkpoint(bad, LOG.verifier_key)


def test_an_unexpected_origin_is_refused() -> None:
    note = sign_checkpoint("other.example/log", 5, ROOT, LOG)
    with pytest.raises(OriginMismatchError):
        verify_checkpoint(note, LOG.verifier_key, origin=ORIGIN)
    assert issubclass(OriginMismatchError, NoteError)


def test_checkpoints_and_notes_are_checked_when_made() -> None:
    for origin, size, root in (
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, 2**64, ROOT),
        (ORIGIN, 1, ROOT[:5]),
    ):
        with pytest.raises(ValueError):
            Checkpoint(origin, size, root)
    with pytest.raises(ValueError):
        Checkpoint(ORIGIN, 1, ROOT, ("",))
    with pytest.raises(MalformedNoteError):
        sign_note("no newline", LOG)
    with pytest.raises(MalformedNoteError):
        sign_note("a\x00b\n", LOG)
    with pytest.raises(ValueError):
        sign_note("text\n")


# --- keys on disk ----------------------------------------------------------------------------------


def test_a_generated_key_is_saved_and_loaded_as_pkcs8_pem(tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    pem = signer.private_key_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "log.pem").write_bytes(pem)
    loaded = load_signer(tmp_path / "log.pem", ORIGIN)
    assert loaded.verifier_key == signer.verifier_key
    note = sign_checkpoint(ORIGIN, 42, ROOT, loaded)
    assert verify_checkpoint(note, signer.verifier_key).size == 42

    encrypted = signer.private_key_pem(password=b"secret")
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert Signer.from_pem(encrypted, ORIGIN, password=b"secret").verifier_key == signer.verifier_key
    with pytest.raises(KeyFormatError):
        Signer.from_pem(encrypted, ORIGIN)
    with pytest.raises(KeyFormatError):
        Signer.from_pem(encrypted, ORIGIN, password=b"wrong")


def test_a_pem_that_is_not_an_ed25519_private_key_is_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFormatError, match="not an Ed25519 key"):
        Signer.from_pem(ec_pem, ORIGIN)
    with pytest.raises(KeyFormatError):
        Signer.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", ORIGIN)
    with pytest.raises(KeyFormatError):
        Signer.from_pem(LOG.verifier_key.encode(), ORIGIN)
