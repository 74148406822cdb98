"""The service's secrets: configured, or for the embedded defaults generated once into the instance folder.

The web service, the workers and the CLI read them here, so none of them needs the web application.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cds_service.decision_log.signed_note import Signer, load_signer
from cds_service.settings import Settings


def instance_secret(settings: Settings, configured: str | None, name: str) -> bytes:
    """A configured key, or for the embedded default one generated once into the instance folder.

    Several workers may start at once: the key is written to a private temporary file and linked into
    place, which fails for all but the first, so every worker reads the same key.
    """
    if configured:
        return configured.encode()
    path = settings.instance_path / name
    _write_once(path, lambda: secrets.token_hex(32).encode())
    return path.read_text().strip().encode()


def _write_once(path: Path, content: Callable[[], bytes]) -> None:
    """Create `path` (mode 0600) with `content()` unless it exists; of several processes, the first wins."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content())
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass
    finally:
        scratch.unlink()


def pseudonym_key(settings: Settings) -> bytes:
    return instance_secret(settings, settings.pseudonym_key, "pseudonym.key")


def audit_key(settings: Settings) -> bytes:
    return instance_secret(settings, settings.audit_key, "audit.key")


def checkpoint_signer(settings: Settings) -> Signer:
    """The Ed25519 key that signs the Merkle tree's checkpoints, named by the log's origin: the configured PEM,
    or for the embedded defaults one generated once into the instance folder (created with mode 0600)."""
    origin = settings.effective_checkpoint_origin
    if settings.checkpoint_key_path is not None:
        return load_signer(settings.checkpoint_key_path, origin)
    path = settings.instance_path / "checkpoint-key.pem"
    _write_once(path, lambda: Signer.generate(origin).private_key_pem())
    return load_signer(path, origin)
