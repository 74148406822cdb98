"""`spine-cds audit`: verify, anchor and purge the decision log."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from cds_service.cli.common import open_runtime, settings


@click.group()
def audit() -> None:
    """Verify, anchor and purge the tamper-evident decision log."""


@audit.command("verify")
def audit_verify() -> None:
    """Walk the chain, the rows, the anchors and the Merkle tree; exit 0 when intact, 1 naming the first broken entry."""
    from cds_service.decision_log.chain import verify_and_record
    from cds_service.decision_log.transparency import tree_problem

    with open_runtime(migrate=True) as runtime:  # the verification is recorded in the database
        report = verify_and_record(runtime.engine, runtime.audit_key, runtime.anchors, tree_problem)
    if report.ok:
        since = f" (after the retention checkpoint at entry {report.checkpoint_seq})" if report.checkpoint_seq else ""
        click.echo(
            f"intact: {report.entries} entries{since}, head at entry {report.head_seq}, {report.anchors} anchor records checked"
        )
        return
    click.echo(f"BROKEN: {report.problem}", err=True)
    sys.exit(1)


@audit.command("anchor")
def audit_anchor() -> None:
    """Record the chain head in the anchor file (outside the database), extend the Merkle tree and sign its checkpoint."""
    from cds_service.decision_log.chain import anchor
    from cds_service.decision_log.transparency import extend_and_sign

    with open_runtime(migrate=True) as runtime:
        record = anchor(runtime.engine, runtime.audit_key, runtime.anchors)
        signed = extend_and_sign(runtime.engine, runtime.checkpoint_signer)
    if record is None:
        click.echo("the head is already anchored")
    else:
        click.echo(f"anchored entry {record['seq']} at {record['at']} in {runtime.anchors.path}")
    if signed is not None:
        click.echo(f"signed the checkpoint of the tree's {signed.size} entries (root {signed.root_hash})")


def _key_text(public_key: str) -> str:
    """A --public-key value: the verifier key itself, or a file holding it."""
    path = Path(public_key)
    return path.read_text(encoding="utf-8").strip() if path.is_file() else public_key.strip()


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the verifier key of the checkpoint signing key, for outside auditors to verify proofs with."""
    from cds_service.keys import checkpoint_signer

    click.echo(checkpoint_signer(settings()).verifier_key)  # no database needed


@audit.command("prove")
@click.argument("decision_id", type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the proof here (default: stdout).")
@click.option(
    "--kind",
    type=click.Choice(["decision", "feedback", "access"]),
    default="decision",
    show_default=True,
    help="What the id names: a decision, a feedback item or an access-log entry.",
)
def audit_prove(decision_id: int, out: Path | None, kind: str) -> None:
    """Write a self-contained proof that DECISION_ID (or a feedback or access entry) is in the log under the newest signed checkpoint."""
    from cds_service.decision_log.transparency import NotAnchored, prove_entry

    with open_runtime(migrate=False) as runtime:
        try:
            text = prove_entry(runtime.engine, kind, decision_id)
        except NotAnchored as exc:
            raise click.ClickException(str(exc)) from None
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote the proof of {kind} {decision_id} to {out}", err=True)


@audit.command("verify-proof")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", "public_key", required=True, help="The verifier key (name+id+key), or a file holding it.")
def audit_verify_proof(path: Path, public_key: str) -> None:
    """Check a proof file offline: no database, no audit key; exit 1 naming what fails."""
    from cds_service.decision_log.proof import ProofVerificationError, verify_proof
    from cds_service.decision_log.signed_note import KeyFormatError, parse_verifier_key
    from cds_service.decision_log.transparency import LEAF_PREFIX

    try:
        verifier = parse_verifier_key(_key_text(public_key))
        verified = verify_proof(path.read_bytes(), verifier)
    except (KeyFormatError, ProofVerificationError) as exc:
        click.echo(f"NOT VERIFIED: {exc}", err=True)
        sys.exit(1)
    entry = json.loads(verified.entry.removeprefix(LEAF_PREFIX)) if verified.entry.startswith(LEAF_PREFIX) else {}
    click.echo(
        f"verified: entry {verified.index + 1} ({entry.get('kind', '?')} {entry.get('entry_id', '?')}) is in "
        f"{verified.origin}'s log of {verified.tree_size} entries, root {verified.root_hash.hex()}"
    )


@audit.command("consistency")
@click.argument("old_size", type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write it here (default: stdout).")
def audit_consistency(old_size: int, out: Path | None) -> None:
    """Write the consistency proof from the signed checkpoint of OLD_SIZE entries to the newest (JSON)."""
    from cds_service.decision_log.transparency import NotAnchored, consistency_file

    with open_runtime(migrate=False) as runtime:
        try:
            document = consistency_file(runtime.engine, old_size)
        except NotAnchored as exc:
            raise click.ClickException(str(exc)) from None
    if out is None:
        click.echo(document, nl=False)
    else:
        out.write_text(document, encoding="utf-8")


@audit.command("verify-consistency")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", "public_key", required=True, help="The verifier key (name+id+key), or a file holding it.")
@click.option(
    "--old",
    "old_note",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The checkpoint you kept earlier: the proof must start from exactly it.",
)
def audit_verify_consistency(path: Path, public_key: str, old_note: Path | None) -> None:
    """Check offline that the newer checkpoint's log extends the older one's (it only grew); exit 1 otherwise."""
    from cds_service.decision_log.proof import ProofVerificationError, verify_extension
    from cds_service.decision_log.signed_note import KeyFormatError, parse_verifier_key

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if old_note is not None and old_note.read_text(encoding="utf-8") != document["old"]:
            raise ProofVerificationError("the proof does not start from the checkpoint you kept")
        old, new = verify_extension(
            document["old"], document["new"], [bytes.fromhex(h) for h in document["proof"]], parse_verifier_key(_key_text(public_key))
        )
    except (KeyFormatError, ProofVerificationError, ValueError, KeyError, TypeError) as exc:
        click.echo(f"NOT VERIFIED: {exc}", err=True)
        sys.exit(1)
    click.echo(f"verified: {new.origin}'s log of {new.size} entries extends its log of {old.size} entries")


@audit.command("purge")
@click.option(
    "--before", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Default: now minus the retention period."
)
def audit_purge(before: datetime | None) -> None:
    """Delete entries older than the retention period, keeping a signed checkpoint so the rest verifies."""
    from datetime import UTC, timedelta

    from cds_service.decision_log.chain import PurgeRefused, purge

    with open_runtime(migrate=True) as runtime:
        days = runtime.settings.retention_days
        cutoff = before.replace(tzinfo=UTC) if before else datetime.now(UTC) - timedelta(days=days)
        try:
            count = purge(runtime.engine, runtime.audit_key, runtime.anchors, cutoff)
        except PurgeRefused as refused:
            click.echo(f"{refused}; nothing was deleted", err=True)
            sys.exit(1)
    click.echo(f"purged {count} entries logged before {cutoff.isoformat()}")

