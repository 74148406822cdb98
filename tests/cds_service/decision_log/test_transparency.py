"""Decision proofs anyone can verify: the Merkle tree over the chain in the database, signed checkpoints,
proof files checked offline (by the library, by `spine-cds audit verify-proof` and by the script in
docs/audit-log.md), consistency between checkpoints; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text
from sqlalchemy.engine import Engine

from cds_service.cli import main
from cds_service.database import make_engine, upgrade
from cds_service.decision_log import chain, merkle
from cds_service.decision_log.proof import STANDALONE_VERIFIER, ProofVerificationError, verify_extension, verify_proof
from cds_service.decision_log.signed_note import Signer
from cds_service.decision_log.tables import Decision, Feedback, IssuedCard, LogEntry, TreeNode
from cds_service.decision_log.transparency import (
    LEAF_PREFIX,
    NotAnchored,
    consistency,
    extend_and_sign,
    prove_entries,
    prove_entry,
    purged_leaf,
    tree_problem,
)
from cds_service.decision_log.writer import DecisionLog
from tests.cds_service.audit_log import AuditLog
from tests.cds_service.decision_log.test_chain import KEY, cli_env, decision, feedback_for

ROOT = Path(__file__).resolve().parents[3]
ORIGIN = "cds.example.org/decision-log"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def log(engine: Engine) -> DecisionLog:
    """An empty log on the test's database."""
    return DecisionLog(engine, b"pseudonym-key", KEY)


def _append(log: DecisionLog, count: int, start: int = 1) -> list[int]:
    return [int(log.append(decision(n)).id) for n in range(start, start + count)]  # type: ignore[arg-type]


def _row(engine: Engine, decision_id: int) -> dict[str, object]:
    with engine.connect() as connection:
        row = chain.row_of(connection, "decision", decision_id)
    assert row is not None
    return row


def test_every_decision_proves_offline_and_the_proof_names_its_row(
    log: DecisionLog, engine: Engine, signer: Signer
) -> None:
    ids = _append(log, 120)
    with pytest.raises(NotAnchored, match="not under a signed checkpoint"):
        prove_entry(engine, "decision", ids[0])
    signed = extend_and_sign(engine, signer)
    assert signed is not None and signed.size == 120
    assert extend_and_sign(engine, signer) is None  # nothing new: no second checkpoint
    for position, decision_id in enumerate(ids):
        verified = verify_proof(prove_entry(engine, "decision", decision_id), signer.verifier, origin=ORIGIN)
        assert (verified.index, verified.tree_size) == (position, 120)
        entry = json.loads(verified.entry.removeprefix(LEAF_PREFIX))
        assert (entry["kind"], entry["entry_id"], entry["seq"]) == ("decision", decision_id, position + 1)
        # the entry's payload hash is the logged row's: the proof is about this very decision
        assert entry["payload_hash"] == chain.payload_hash(_row(engine, decision_id))
    with pytest.raises(NotAnchored, match="no decision 999999"):
        prove_entry(engine, "decision", 999999)


def test_an_edit_to_the_entry_the_proof_or_the_checkpoint_fails(log: DecisionLog, engine: Engine, signer: Signer) -> None:
    ids = _append(log, 40)
    extend_and_sign(engine, signer)
    proof = prove_entry(engine, "decision", ids[17])
    lines = proof.partition("\n\n")[0].split("\n")
    entry = base64.b64decode(lines[1].removeprefix("extra "))
    edited_entry = entry.replace(b'"kind":"decision"', b'"kind":"feedback"')
    edits = {
        "entry": proof.replace(lines[1], "extra " + base64.b64encode(edited_entry).decode()),
        "index": proof.replace(lines[2], "index 18"),
        "a proof hash": proof.replace(lines[3], base64.b64encode(bytes(32)).decode()),
        "a dropped proof hash": proof.replace(lines[3] + "\n", ""),
        "the checkpoint size": proof.replace(f"\n{ORIGIN}\n40\n", f"\n{ORIGIN}\n41\n"),
        "the signature": proof[:-6] + ("A" if proof[-6] != "A" else "B") + proof[-5:],
    }
    for what, tampered in edits.items():
        assert tampered != proof, what
        with pytest.raises(ProofVerificationError):
            verify_proof(tampered, signer.verifier)
    with pytest.raises(ProofVerificationError):
        verify_proof(proof, Signer.generate(ORIGIN).verifier)  # another key of the same name


def test_consistency_between_checkpoints_and_a_truncated_regrown_log_fails(
    log: DecisionLog, engine: Engine, signer: Signer
) -> None:
    _append(log, 30)
    first = extend_and_sign(engine, signer)
    _append(log, 25, start=31)
    second = extend_and_sign(engine, signer)
    assert first is not None and second is not None
    grown = consistency(engine, first.size)
    old, new = verify_extension(grown["old"], grown["new"], [bytes.fromhex(h) for h in grown["proof"]], signer.verifier)
    assert (old.size, new.size) == (30, 55)

    # someone with the database cuts the log back to 20 entries and grows it again with other decisions
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM log_chain WHERE seq > 20"))
        connection.execute(text("DELETE FROM merkle_nodes WHERE (idx + 1) * (1 << level) > 20"))
        connection.execute(text("DELETE FROM tree_checkpoints"))
    _append(log, 40, start=500)
    regrown = extend_and_sign(engine, signer)
    assert regrown is not None and regrown.size == 60
    with engine.begin() as connection:  # the log's own copy of the old checkpoint is gone; the auditor kept one
        connection.execute(text("INSERT INTO tree_checkpoints (size, created_at, root_hash, note) VALUES (30, '2026-01-01', 'x', :n)"), {"n": first.note})
    forged = consistency(engine, 30)
    with pytest.raises(ProofVerificationError, match="does not extend"):
        verify_extension(first.note, forged["new"], [bytes.fromhex(h) for h in forged["proof"]], signer.verifier)


def test_the_cli_proves_and_verifies_a_decision_with_the_public_key_only(
    log: DecisionLog, engine: Engine, tmp_path: Path, database_url: str
) -> None:
    ids = _append(log, 12)
    env = cli_env(database_url, tmp_path)
    assert CliRunner().invoke(main, ["audit", "prove", str(ids[3])], env=env).exit_code == 1  # nothing signed yet
    anchored = CliRunner().invoke(main, ["audit", "anchor"], env=env)
    assert anchored.exit_code == 0 and "signed the checkpoint of the tree's 12 entries" in anchored.output, anchored.output
    key = CliRunner().invoke(main, ["audit", "public-key"], env=env).output.strip()
    assert re.fullmatch(r"[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+", key), key
    (tmp_path / "log.pub").write_text(key + "\n")
    proof_file = tmp_path / "decision.proof"
    proved = CliRunner().invoke(main, ["audit", "prove", str(ids[3]), "--out", str(proof_file)], env=env)
    assert proved.exit_code == 0, proved.output

    # the verifier needs neither the database nor the audit key: an empty environment
    checked = CliRunner().invoke(main, ["audit", "verify-proof", str(proof_file), "--public-key", str(tmp_path / "log.pub")], env={})
    assert checked.exit_code == 0, checked.output
    assert f"(decision {ids[3]})" in checked.output and "log of 12 entries" in checked.output
    proof_file.write_text(proof_file.read_text().replace("index 3", "index 4"))
    refused = CliRunner().invoke(main, ["audit", "verify-proof", str(proof_file), "--public-key", key], env={})
    assert refused.exit_code == 1 and "NOT VERIFIED" in refused.output


def test_the_cli_shows_the_log_only_grew_between_two_checkpoints(
    log: DecisionLog, engine: Engine, tmp_path: Path, database_url: str
) -> None:
    env = cli_env(database_url, tmp_path)
    _append(log, 12)
    assert CliRunner().invoke(main, ["audit", "anchor"], env=env).exit_code == 0
    kept = tmp_path / "checkpoint-12.txt"  # what an outside auditor saved at the time
    with engine.connect() as connection:
        kept.write_text(connection.execute(text("SELECT note FROM tree_checkpoints WHERE size = 12")).scalar_one())
    _append(log, 9, start=100)
    assert CliRunner().invoke(main, ["audit", "anchor"], env=env).exit_code == 0
    key = CliRunner().invoke(main, ["audit", "public-key"], env=env).output.strip()
    proof = tmp_path / "grew.json"
    assert CliRunner().invoke(main, ["audit", "consistency", "12", "--out", str(proof)], env=env).exit_code == 0

    checked = CliRunner().invoke(main, ["audit", "verify-consistency", str(proof), "--public-key", key, "--old", str(kept)], env={})
    assert checked.exit_code == 0, checked.output
    assert "log of 21 entries extends its log of 12 entries" in checked.output
    document = json.loads(proof.read_text())
    document["proof"][0] = "00" * 32
    proof.write_text(json.dumps(document))
    refused = CliRunner().invoke(main, ["audit", "verify-consistency", str(proof), "--public-key", key], env={})
    assert refused.exit_code == 1 and "does not extend" in refused.output
    unknown = CliRunner().invoke(main, ["audit", "consistency", "5"], env=env)
    assert unknown.exit_code == 1 and "no signed checkpoint of size 5" in unknown.output


def test_an_entry_rewritten_with_the_audit_key_after_the_tree_took_it_is_caught(
    log: DecisionLog, engine: Engine, tmp_path: Path, database_url: str
) -> None:
    """Someone holding the audit key rewrites the newest decision and its chain entry so that the chain verifies:
    the Merkle tree, extended before, still holds the old entry."""
    env = cli_env(database_url, tmp_path)
    ids = _append(log, 6)
    assert CliRunner().invoke(main, ["audit", "anchor"], env=env).exit_code == 0
    _append(log, 1, start=7)
    extend_and_sign(engine, Signer.from_pem((tmp_path / "instance" / "checkpoint-key.pem").read_bytes(), ORIGIN))
    assert tree_problem(engine) is None
    newest = ids[-1] + 1
    with engine.begin() as connection:
        connection.execute(text("UPDATE decisions SET band = 'unlikely' WHERE id = :id"), {"id": newest})
        row = chain.row_of(connection, "decision", newest)
        assert row is not None
        entry = connection.execute(select(LogEntry).where(LogEntry.kind == "decision", LogEntry.entry_id == newest)).one()
        seq, payload = entry.seq, chain.payload_hash(row)
        rehashed = chain.entry_hash(KEY, "decision", newest, payload, entry.prev_hash, entry.created_at)
        connection.execute(
            text("UPDATE log_chain SET payload_hash = :p, entry_hash = :h WHERE seq = :s"), {"p": payload, "h": rehashed, "s": seq}
        )
    assert chain.verify(engine, KEY).ok  # the chain alone cannot tell
    problem = tree_problem(engine)
    assert problem is not None and f"entry {seq} (decision {newest})" in str(problem)
    verified = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert verified.exit_code == 1 and "differs from the Merkle tree's leaf" in verified.output
    with engine.connect() as connection:  # the auditors' integrity badge shows it too
        badge = connection.execute(text("SELECT ok, problem FROM verifications ORDER BY id DESC LIMIT 1")).one()
    assert not badge.ok and "differs from the Merkle tree's leaf" in badge.problem


def test_the_script_in_the_documentation_verifies_proofs(log: DecisionLog, engine: Engine, signer: Signer, tmp_path: Path) -> None:
    """docs/audit-log.md gives auditors a script (standard library and `cryptography` only); it is the one tested here."""
    document = (ROOT / "docs" / "audit-log.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", document, flags=re.S)
    (script,) = [b for b in blocks if "tlog-proof" in b]
    assert script.strip() == STANDALONE_VERIFIER.strip()
    (tmp_path / "verify_proof.py").write_text(script)
    ids = _append(log, 9)
    extend_and_sign(engine, signer)
    proof_file = tmp_path / "d.proof"
    proof_file.write_text(prove_entry(engine, "decision", ids[8]))
    run = [sys.executable, str(tmp_path / "verify_proof.py"), str(proof_file), signer.verifier_key]
    ok = subprocess.run(run, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "verified: entry 8" in ok.stdout, ok.stderr
    proof_file.write_text(proof_file.read_text().replace("index 8", "index 7"))
    assert subprocess.run(run, capture_output=True, text=True, check=False).returncode == 1


def _bulk_log(engine: Engine, count: int) -> list[int]:
    """`count` decisions and their chain entries written in one transaction, as the log's append links them."""
    template = {c.key: getattr(decision(0), c.key) for c in Decision.__table__.columns if c.key != "id"}
    rows, links = [], []
    prev, now = chain.GENESIS, datetime.now(UTC)
    for number in range(1, count + 1):
        card = f"card-{number}"
        row = {**template, "id": number, "created_at": now, "patient_pseudonym": f"{number:064x}", "card_uuids": [card]}
        row["hook_instance"] = f"instance-{number}"
        link = chain.entry(KEY, "decision", number, row, number - 1, prev, now)
        rows.append(row)
        links.append(link)
        prev = link["entry_hash"]
    with engine.begin() as connection:
        connection.execute(insert(Decision), rows)
        connection.execute(insert(IssuedCard), [{"card_uuid": row["card_uuids"][0], "decision_id": row["id"]} for row in rows])
        connection.execute(insert(LogEntry), links)
    return list(range(1, count + 1))


def test_a_log_of_10000_decisions_proves_every_one(tmp_path: Path, signer: Signer) -> None:
    """On SQLite: 10,000 chained decisions (the chain verifies), one signed checkpoint, every decision's proof verified."""
    engine = make_engine(f"sqlite:///{tmp_path / 'big.sqlite3'}")
    try:
        upgrade(engine)
        ids = _bulk_log(engine, 10_000)
        assert chain.verify(engine, KEY).ok
        signed = extend_and_sign(engine, signer)
        assert signed is not None and signed.size == 10_000
        proofs = prove_entries(engine, "decision", ids)
        for position, decision_id in enumerate(ids):
            verified = verify_proof(proofs[decision_id], signer.verifier)
            assert verified.index == position
            assert json.loads(verified.entry.removeprefix(LEAF_PREFIX))["entry_id"] == decision_id
    finally:
        engine.dispose()


def test_the_decision_page_offers_the_proof_for_download(audit_log: AuditLog) -> None:
    likely = audit_log.calls["likely"]
    page = audit_log.get(f"/audit/decisions/{likely.id}")
    assert f'href="/audit/decisions/{likely.id}/proof"' in page.text
    parts = audit_log.running.app.extensions["spine_cds"]
    extend_and_sign(parts.engine, parts.runtime.checkpoint_signer)
    download = audit_log.get(f"/audit/decisions/{likely.id}/proof")
    assert download.status_code == 200, download.text
    assert download.headers["Content-Disposition"] == f'attachment; filename="decision-{likely.id}.proof"'
    verified = verify_proof(download.text, parts.runtime.checkpoint_signer.verifier)
    assert json.loads(verified.entry.removeprefix(LEAF_PREFIX))["entry_id"] == likely.id
    audit_log.assert_no_patient_id(download.text)
    assert any(e["action"] == "page.proof" for e in audit_log.access_log())
    assert audit_log.get("/audit/decisions/2147483000/proof").status_code == 404


def test_the_decision_page_offers_each_feedback_items_proof(audit_log: AuditLog) -> None:
    likely, order = audit_log.calls["likely"], audit_log.calls["order"]
    parts = audit_log.running.app.extensions["spine_cds"]
    extend_and_sign(parts.engine, parts.runtime.checkpoint_signer)
    with parts.engine.connect() as connection:
        (feedback_id,) = connection.execute(select(Feedback.id).where(Feedback.decision_id == likely.id)).scalars()
    link = f"/audit/decisions/{likely.id}/feedback/{feedback_id}/proof"
    assert f'href="{link}"' in audit_log.get(f"/audit/decisions/{likely.id}").text
    download = audit_log.get(link)
    assert download.headers["Content-Disposition"] == f'attachment; filename="feedback-{feedback_id}.proof"'
    entry = json.loads(verify_proof(download.text, parts.runtime.checkpoint_signer.verifier).entry.removeprefix(LEAF_PREFIX))
    assert (entry["kind"], entry["entry_id"]) == ("feedback", feedback_id)
    audit_log.assert_no_patient_id(download.text)
    assert audit_log.get(f"/audit/decisions/{order.id}/feedback/{feedback_id}/proof").status_code == 404  # another decision's
    assert audit_log.get(f"/audit/decisions/{likely.id}/feedback/2147483000/proof").status_code == 404
    assert audit_log.get(f"/audit/decisions/{likely.id}/feedback/{2**70}/proof").status_code == 404
    recorded = [e["details"] for e in audit_log.access_log() if e["action"] == "page.proof"]
    assert {"decision_id": likely.id, "feedback_id": feedback_id} in recorded
    # the same from the API
    from_api = audit_log.get(f"/audit/api/decisions/{likely.id}/feedback/{feedback_id}/proof")
    assert from_api.status_code == 200 and from_api.text == download.text
    refused = audit_log.get(f"/audit/api/decisions/{order.id}/feedback/{feedback_id}/proof")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_anchored"
    assert audit_log.get(f"/audit/api/decisions/{likely.id}/feedback/{2**70}/proof").status_code == 404


def test_the_api_and_the_checkpoints_page_give_proofs_the_key_a_note_to_keep_and_the_proof_the_log_grew(
    audit_log_factory: Callable[..., AuditLog], database_url: str, tmp_path: Path
) -> None:
    audit_log = audit_log_factory(database_url=database_url)
    parts = audit_log.running.app.extensions["spine_cds"]
    kept_size = extend_and_sign(parts.engine, parts.runtime.checkpoint_signer).size

    listed = audit_log.get("/audit/api/checkpoints").json()
    key, newest = listed["verifier_key"], listed["items"][0]
    assert newest["size"] == kept_size
    likely = audit_log.calls["likely"]
    proof = audit_log.get(f"/audit/api/decisions/{likely.id}/proof")
    assert proof.status_code == 200 and verify_proof(proof.text, key).tree_size == kept_size
    assert audit_log.get("/audit/api/consistency", {"from": "x"}).status_code == 400
    assert audit_log.get("/audit/api/decisions/2147483000/proof").status_code == 404

    page = audit_log.get("/audit/checkpoints")
    assert page.status_code == 200 and key in page.text
    assert f'href="/audit/checkpoints/{kept_size}/note"' in page.text
    kept = audit_log.get(f"/audit/checkpoints/{kept_size}/note")
    assert kept.text == newest["note"]
    assert kept.headers["Content-Disposition"] == f'attachment; filename="checkpoint-{kept_size}.note"'

    newest_size = extend_and_sign(parts.engine, parts.runtime.checkpoint_signer).size  # the views above grew the log
    assert newest_size > kept_size
    assert f'href="/audit/checkpoints/{kept_size}/consistency"' in audit_log.get("/audit/checkpoints").text
    download = audit_log.get(f"/audit/checkpoints/{kept_size}/consistency")
    assert download.status_code == 200, download.text
    document = json.loads(download.text)
    assert document["old"] == kept.text  # starts from exactly the note the auditor kept
    old, new = verify_extension(kept.text, document["new"], [bytes.fromhex(h) for h in document["proof"]], key)
    assert (old.size, new.size) == (kept_size, newest_size)
    # and the auditor's own script, given the two downloads, agrees
    (tmp_path / "kept.note").write_bytes(kept.content)
    (tmp_path / "grew.json").write_bytes(download.content)
    (tmp_path / "verify_proof.py").write_text(STANDALONE_VERIFIER, encoding="utf-8")
    script = [sys.executable, str(tmp_path / "verify_proof.py"), str(tmp_path / "grew.json"), key, str(tmp_path / "kept.note")]
    checked = subprocess.run(script, capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and f"of {newest_size} entries extends its log of {kept_size}" in checked.stdout, checked.stderr
    assert audit_log.get("/audit/api/consistency", {"from": kept_size}).json()["proof"] == document["proof"]
    # a kept checkpoint the list no longer shows is reached by its size through the form
    via_form = audit_log.get("/audit/checkpoints/consistency", {"from": str(kept_size)}, follow_redirects=True)
    assert via_form.status_code == 200 and json.loads(via_form.text)["old"] == kept.text
    for wrong in ("", "x", "-3", "99999999999999"):
        refused = audit_log.get("/audit/checkpoints/consistency", {"from": wrong})
        assert refused.status_code == 400 and "checkpoint you kept" in refused.text
    for missing in (
        f"/audit/checkpoints/{newest_size + 7}/note",
        f"/audit/checkpoints/{newest_size + 7}/consistency",
        f"/audit/checkpoints/{2**70}/note",  # past any id, and past what the access log's JSON can hold
        f"/audit/checkpoints/{2**70}/consistency",
    ):
        refused = audit_log.get(missing)
        assert refused.status_code == 404 and "no signed checkpoint" in refused.text

    actions = {e["action"] for e in audit_log.access_log()}
    assert {"api.checkpoints", "api.proof", "api.consistency", "page.checkpoints", "page.checkpoint", "page.consistency"} <= actions


def _purge_first(engine: Engine, count: int, tmp_path: Path) -> None:
    """A retention purge of the log's first `count` entries."""
    with engine.connect() as connection:
        before = connection.execute(select(LogEntry.created_at).where(LogEntry.seq == count + 1)).scalar_one()
    assert chain.purge(engine, KEY, chain.AnchorFile(tmp_path / "anchors.ndjson"), before) == count


def test_entries_purged_before_the_tree_took_them_in_stand_as_placeholders_and_the_tree_goes_on(
    log: DecisionLog, engine: Engine, signer: Signer, tmp_path: Path
) -> None:
    ids = _append(log, 10)
    first = extend_and_sign(engine, signer)
    assert first is not None and first.size == 10
    ids += _append(log, 10, start=11)
    _purge_first(engine, 15, tmp_path)  # entries 11-15 were never in the tree
    grown = extend_and_sign(engine, signer)
    assert grown is not None and grown.size == 20
    with engine.connect() as connection:
        leaves = dict(connection.execute(select(TreeNode.idx, TreeNode.hash).where(TreeNode.level == 0)).all())
    assert [bytes(leaves[seq - 1]) for seq in range(11, 16)] == [merkle.leaf_hash(purged_leaf(seq)) for seq in range(11, 16)]
    for decision_id in ids[15:]:
        assert verify_proof(prove_entry(engine, "decision", decision_id), signer.verifier).index == decision_id - 1
    with pytest.raises(NotAnchored, match="purged"):
        prove_entry(engine, "decision", ids[12])
    verify_extension(first.note, grown.note, [bytes.fromhex(h) for h in consistency(engine, 10)["proof"]], signer.verifier)
    assert tree_problem(engine) is None and chain.verify(engine, KEY).ok


def test_a_gap_no_purge_accounts_for_stops_the_tree(log: DecisionLog, engine: Engine, signer: Signer, tmp_path: Path) -> None:
    _append(log, 6)
    _purge_first(engine, 2, tmp_path)
    with engine.begin() as connection:  # entries deleted behind the purge's back
        connection.execute(text("DELETE FROM log_chain WHERE seq IN (4, 5)"))
    signed = extend_and_sign(engine, signer)
    assert signed is not None and signed.size == 3  # the two purged as placeholders, then entry 3, then the gap
    assert not chain.verify(engine, KEY).ok


def test_a_feedback_item_proves_too(log: DecisionLog, engine: Engine, signer: Signer) -> None:
    logged = log.append(decision(1))
    assert log.add_feedback(feedback_for(logged))
    extend_and_sign(engine, signer)
    with engine.connect() as connection:
        feedback_id = connection.execute(text("SELECT id FROM feedback")).scalar_one()
    verified = verify_proof(prove_entry(engine, "feedback", feedback_id), signer.verifier)
    assert json.loads(verified.entry.removeprefix(LEAF_PREFIX))["kind"] == "feedback"
