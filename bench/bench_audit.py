"""Decision-log append throughput and verification cost, on SQLite and PostgreSQL.

    python3 bench/bench_audit.py
    python3 bench/bench_audit.py --postgres postgresql://postgres@127.0.0.1:5432/postgres --entries 10000

Appends are real decisions (the size of a patient-view decision with one card) written through
DecisionLog.append, each in its own committed transaction with its chain link, from one process and
from four processes at once. Verification walks the whole chain (rows re-hashed, links and keyed hashes
checked) and is reported per 10,000 entries.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.database import make_engine, upgrade  # noqa: E402
from cds_service.decision_log.chain import verify  # noqa: E402
from cds_service.decision_log.tables import Decision  # noqa: E402
from cds_service.decision_log.writer import DecisionLog  # noqa: E402

KEY = b"bench-audit-key"


def decision_row(card: dict[str, Any], assessment: dict[str, Any]) -> Decision:
    return Decision(
        service_id="spine-knee-patient-view",
        hook="patient-view",
        hook_instance=str(uuid.uuid4()),
        issuer="https://ehr.example.org",
        user_id="Practitioner/bench",
        patient_pseudonym=uuid.uuid4().hex * 2,
        model_id="spine-origin-knee-pain",
        model_version="1.0.0",
        model_hash="sha256:" + "0" * 64,
        band="likely",
        outcome="cards",
        status_code=200,
        card_uuids=[str(uuid.uuid4())],
        suggestion_uuids=[str(uuid.uuid4())],
        assessment=assessment,
        cards=[card],
        input_digest="hmac-sha256:" + "1" * 64,
        latency_ms=4.2,
    )


def sample_card() -> tuple[dict[str, Any], dict[str, Any]]:
    """A real card and assessment, so rows have production size."""
    from datetime import date

    from hooks.cards import CardOptions
    from hooks.model import load_model
    from hooks.services import SERVICES_BY_ID, evaluate
    from hooks.synthetic import generate, prefetch_for

    resources = generate("radiculopathy-knee-pain")
    evaluation = evaluate(
        load_model(),
        SERVICES_BY_ID["spine-knee-patient-view"],
        {"userId": "Practitioner/bench", "patientId": resources[0]["id"]},
        prefetch_for(resources),
        CardOptions("https://cds.example.org/model"),
        today=date(2026, 11, 24),
    )
    return evaluation.cards[0], evaluation.assessment.to_dict()


def _append(url: str, count: int) -> None:
    card, assessment = sample_card()
    engine = make_engine(url)
    log = DecisionLog(engine, b"pseudonym", KEY)
    for _ in range(count):
        log.append(decision_row(card, assessment))
    engine.dispose()


def measure(url: str, entries: int) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    _append(url, entries // 2)
    single = (entries // 2) / (time.perf_counter() - started)

    context = multiprocessing.get_context("spawn")
    per_worker = entries // 8
    workers = [context.Process(target=_append, args=(url, per_worker)) for _ in range(4)]
    started = time.perf_counter()
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    parallel = 4 * per_worker / (time.perf_counter() - started)

    started = time.perf_counter()
    report = verify(engine, KEY)
    elapsed = time.perf_counter() - started
    assert report.ok, report.problem
    engine.dispose()
    return {
        "entries": report.entries,
        "append_one_process_per_s": round(single, 1),
        "append_four_processes_per_s": round(parallel, 1),
        "verify_s_per_10k": round(elapsed / report.entries * 10_000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin URL; a scratch database is created"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        results["sqlite"] = measure(f"sqlite:///{scratch}/bench.sqlite3", args.entries)
    import psycopg

    name = f"spine_cds_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        results["postgresql"] = measure(args.postgres.rsplit("/", 1)[0] + f"/{name}", args.entries)
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(results, indent=2))
    print(f"\n{'database':12} {'append 1 proc/s':>16} {'append 4 procs/s':>17} {'verify s/10k':>13}")
    for database, figures in results.items():
        print(
            f"{database:12} {figures['append_one_process_per_s']:>16} {figures['append_four_processes_per_s']:>17}"
            f" {figures['verify_s_per_10k']:>13}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "audit.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
