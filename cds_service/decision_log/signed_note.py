"""Signed checkpoints of the decision log's Merkle tree, as C2SP signed notes with Ed25519.

Formats followed (C2SP/C2SP repository, files signed-note.md and tlog-checkpoint.md; c2sp.org/signed-note
and c2sp.org/tlog-checkpoint):

- A signed note is a text ending in a newline, a blank line, then one or more signature lines
  "— <key name> <base64(4-byte big-endian key ID || signature)>\\n" (U+2014 EM DASH, then a space).
  The signed message is the text *including* its final newline, without the blank line. The text is
  separated from the signatures by the *last* empty line. The whole note is valid UTF-8 with no ASCII
  control character other than newline. Key names are non-empty, without Unicode spaces or "+".
- Ed25519 (signature type 0x01): key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4],
  signature per RFC 8032 over the note text.
- Verifiers ignore signatures from unknown keys (a line matches only if both name and key ID match),
  MUST verify those from a known key, and reject the note when none verifies. The spec says a failed
  signature from a known key SHOULD reject the whole note: here it always does, even if another line by
  the same key verifies. At most 100 signature lines are accepted (golang.org/x/mod/sumdb/note's limit;
  the spec asks for at least 16).
- A checkpoint's note text is the origin line, the tree size in ASCII decimal without leading zeroes,
  the base64 RFC 6962 root hash, then optional non-empty extension lines, each ending in a newline.
- Base64 is RFC 4648 section 4 (standard alphabet, padded). Decoding here is canonical: text that is not
  exactly what encoding the decoded bytes gives back is refused, so no two texts carry the same bytes
  (otherwise an edit to the unused low bits of a final base64 character would go unnoticed).

The verifier key text form is the one of golang.org/x/mod/sumdb/note: "<name>+<8 hex digits key
ID>+<base64(0x01 || public key)>", e.g. "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW".

Errors: `NoteError` and its subclasses `MalformedNoteError`, `UnknownKeyError`, `BadSignatureError`,
`OriginMismatchError` for notes; `KeyFormatError` for a verifier key string or PEM file that cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
ED25519 = 0x01  # the signature type byte of c2sp.org/signed-note
MAX_SIGNATURES = 100
MAX_TREE_SIZE = 2**64 - 1  # sizes are uint64 in every tlog implementation
ROOT_HASH_SIZE = 32
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A signed note that does not verify: one of the subclasses says why."""


class MalformedNoteError(NoteError):
    """The text is not a signed note, or its body is not a checkpoint."""


class UnknownKeyError(NoteError):
    """No signature line is by the verifier's key (name and key ID)."""


class BadSignatureError(NoteError):
    """A signature line by the verifier's key does not verify over the note text."""


class OriginMismatchError(NoteError):
    """The checkpoint verified but is for another log than the one expected."""


class KeyFormatError(ValueError):
    """A verifier key string, key name or private key file that is not of the expected form."""


def decode_base64(text: str) -> bytes:
    """RFC 4648 section 4 base64, canonical only; `ValueError` otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


def encode_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode space, no "+" (c2sp.org/signed-note, Format)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and not _CONTROL.search(name)


def key_id(name: str, public_key: bytes) -> int:
    """The Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4] as a big-endian uint32."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Verifier:
    """A log's public key under its key name."""

    name: str
    public_key: bytes  # 32 bytes, RFC 8032 encoding

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise KeyFormatError(f"invalid key name {self.name!r}: it must be non-empty, with no spaces and no '+'")
        if len(self.public_key) != 32:
            raise KeyFormatError(f"an Ed25519 public key is 32 bytes, not {len(self.public_key)}")

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.public_key)

    @property
    def key(self) -> str:
        """The verifier key string: name+hex key ID+base64(0x01 || public key)."""
        return f"{self.name}+{self.key_id:08x}+{encode_base64(bytes([ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def parse_verifier_key(text: str) -> Verifier:
    """Read a verifier key string; `KeyFormatError` unless it is well formed with the key ID its name and key give."""
    parts = text.split("+", 2)  # the base64 key may hold "+" itself; the name and key ID do not
    if len(parts) != 3:
        raise KeyFormatError("a verifier key is <name>+<key ID>+<key>")
    name, hex_id, encoded = parts
    if not _KEY_ID_HEX.fullmatch(hex_id):
        raise KeyFormatError("the key ID of a verifier key is 8 lowercase hex digits")
    try:
        raw = decode_base64(encoded)
    except ValueError as exc:
        raise KeyFormatError(f"the key of a verifier key is {exc}") from None
    if len(raw) != 33 or raw[0] != ED25519:
        raise KeyFormatError("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")
    verifier = Verifier(name, raw[1:])
    if verifier.key_id != int(hex_id, 16):
        raise KeyFormatError(f"the key ID {hex_id} is not the one of this name and key ({verifier.key_id:08x})")
    return verifier


@dataclass(frozen=True)
class Signer:
    """A log's Ed25519 private key under its key name."""

    name: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise KeyFormatError(f"invalid key name {self.name!r}: it must be non-empty, with no spaces and no '+'")

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes, name: str, password: bytes | None = None) -> Signer:
        """From a PKCS #8 PEM private key (as `openssl genpkey -algorithm ed25519` writes)."""
        try:
            key = serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"not a readable PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"the PEM key is {type(key).__name__}, not an Ed25519 key")
        return cls(name, key)

    @property
    def verifier(self) -> Verifier:
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return Verifier(self.name, raw)

    @property
    def verifier_key(self) -> str:
        return self.verifier.key

    def private_key_pem(self, password: bytes | None = None) -> bytes:
        """PKCS #8 PEM, encrypted when a password is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def signature_line(self, text: str) -> str:
        signature = self.private_key.sign(text.encode("utf-8"))
        return f"{SIGNATURE_PREFIX}{self.name} {encode_base64(self.verifier.key_id.to_bytes(4, 'big') + signature)}\n"


def load_signer(path: Path | str, name: str, password: bytes | None = None) -> Signer:
    """The signer whose PKCS #8 PEM private key is in the file at `path`."""
    return Signer.from_pem(Path(path).read_bytes(), name, password)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line, not yet verified."""

    name: str
    key_id: int
    signature: bytes  # after the key ID


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNoteError("a note text ends in a newline")
    if _CONTROL.search(text):
        raise MalformedNoteError("a note has no control characters other than newline")


def sign_note(text: str, *signers: Signer) -> str:
    """The signed note of `text` (which ends in a newline) with one signature line per signer."""
    _check_text(text)
    if not signers:
        raise ValueError("a signed note has at least one signature")
    return text + "\n" + "".join(signer.signature_line(text) for signer in signers)


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, checking only their form."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("a note is UTF-8") from None
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    lines = block.split("\n")[:-1]  # the block ends in a newline: the last piece is empty
    if not lines:
        raise MalformedNoteError("no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"more than {MAX_SIGNATURES} signature lines")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise MalformedNoteError("a signature line starts with an em dash and a space")
        name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not space or not valid_key_name(name):
            raise MalformedNoteError(f"signature line with an invalid key name {name!r}")
        try:
            raw = decode_base64(encoded)
        except ValueError as exc:
            raise MalformedNoteError(f"the signature by {name} is {exc}") from None
        if len(raw) < 5:
            raise MalformedNoteError(f"the signature by {name} is too short")
        signatures.append(NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    return text, signatures


def open_note(note: str | bytes, verifier: Verifier | str) -> str:
    """The text of a note that `verifier` signed; `NoteError` (a subclass naming the failure) otherwise.

    Lines by other keys are ignored; every line by the verifier's key must verify.
    """
    if isinstance(verifier, str):
        verifier = parse_verifier_key(verifier)
    text, signatures = parse_note(note)
    message = text.encode("utf-8")
    matched = False
    for signature in signatures:
        if signature.name == verifier.name and signature.key_id == verifier.key_id:
            matched = True
            if not verifier.verify(message, signature.signature):
                raise BadSignatureError(f"the signature by {verifier.name}+{verifier.key_id:08x} does not verify")
    if not matched:
        raise UnknownKeyError(f"the note has no signature by {verifier.name}+{verifier.key_id:08x}")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its tree size and the RFC 6962 root hash at that size."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("a checkpoint's origin is one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValueError(f"tree size {self.size} is not a uint64")
        if len(self.root_hash) != ROOT_HASH_SIZE:
            raise ValueError(f"a root hash is {ROOT_HASH_SIZE} bytes, not {len(self.root_hash)}")
        if any(not line or "\n" in line for line in self.extensions):
            raise ValueError("extension lines are non-empty single lines")

    @property
    def body(self) -> str:
        """The note text (c2sp.org/tlog-checkpoint, Note text)."""
        lines = [self.origin, str(self.size), encode_base64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Read a checkpoint note text (not a signed note: see `verify_checkpoint`)."""
    if not text.endswith("\n"):
        raise MalformedNoteError("a checkpoint ends in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise MalformedNoteError("a checkpoint is at least three non-empty lines: origin, tree size, root hash")
    origin, size, encoded, *extensions = lines
    if not _DECIMAL.fullmatch(size) or int(size) > MAX_TREE_SIZE:
        raise MalformedNoteError(f"the tree size {size!r} is not a decimal uint64 without leading zeroes")
    try:
        root_hash = decode_base64(encoded)
    except ValueError as exc:
        raise MalformedNoteError(f"the root hash is {exc}") from None
    if len(root_hash) != ROOT_HASH_SIZE:
        raise MalformedNoteError(f"the root hash is {len(root_hash)} bytes, not {ROOT_HASH_SIZE}")
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def sign_checkpoint(
    origin: str, size: int, root_hash: bytes, signer: Signer, *cosigners: Signer, extensions: Sequence[str] = ()
) -> str:
    """The signed checkpoint note for the tree (size, root_hash) of log `origin`.

    The key name SHOULD be the origin (c2sp.org/tlog-checkpoint, Signatures); that is the caller's choice.
    """
    checkpoint = Checkpoint(origin, size, root_hash, tuple(extensions))
    return sign_note(checkpoint.body, signer, *cosigners)


def verify_checkpoint(note: str | bytes, verifier: Verifier | str, *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in `note` once `verifier`'s signature verifies (and its origin is `origin`, when given)."""
    checkpoint = parse_checkpoint(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise OriginMismatchError(f"the checkpoint is for {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
