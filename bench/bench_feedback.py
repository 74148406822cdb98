"""One feedback call of 1,000 items, through the feedback pipeline, on SQLite and PostgreSQL.

    python3 bench/bench_feedback.py
    python3 bench/bench_feedback.py --items 1000 --rounds 5 --postgres postgresql://postgres@127.0.0.1:5432/postgres

The log first holds 1,000 decisions with one card each (real cards and assessments); each round posts
the body an EHR would send for all of them (JSON bytes, parsed and validated at the edge, the cards
looked up, the items stored with their chain links in one transaction) and then the same body again
(every item a duplicate). Reports the median and worst of the rounds. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_audit import KEY, decision_row, sample_card  # noqa: E402
from cds_service.cds_hooks.auth import Caller  # noqa: E402
from cds_service.cds_hooks.pipeline import FeedbackPipeline  # noqa: E402
from cds_service.database import make_engine, upgrade  # noqa: E402
from cds_service.decision_log.writer import DecisionLog  # noqa: E402

ISSUER = "https://ehr.example.org"


def run(url: str, items: int, rounds: int) -> dict[str, float]:
    engine = make_engine(url)
    upgrade(engine)
    log = DecisionLog(engine, b"bench-pseudonym-key", KEY)
    card, assessment = sample_card()
    pipeline = FeedbackPipeline(log, max_items=items)
    caller = Caller(issuer=ISSUER, subject=None, tenant=None, jti="bench")
    first, again = [], []
    for round_ in range(rounds):
        cards = []
        for _ in range(items):
            row = decision_row(card, assessment)
            row.issuer = ISSUER
            log.append(row)
            cards.append(row.card_uuids[0])
        body = orjson.dumps(
            {
                "feedback": [
                    {"card": c, "outcome": "overridden", "outcomeTimestamp": f"2026-11-24T10:00:{round_:02d}Z"} for c in cards
                ]
            }
        )
        started = time.perf_counter()
        assert pipeline.handle("spine-knee-patient-view", body, caller) == {"stored": items, "duplicates": 0}
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert pipeline.handle("spine-knee-patient-view", body, caller) == {"stored": 0, "duplicates": items}
        again.append(time.perf_counter() - started)
    engine.dispose()
    return {
        "stored_median_s": statistics.median(first),
        "stored_worst_s": max(first),
        "duplicates_median_s": statistics.median(again),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        results["sqlite"] = run(f"sqlite:///{directory}/bench.sqlite3", args.items, args.rounds)
    name = f"bench_feedback_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = args.postgres.rsplit("/", 1)[0]
        results["postgresql"] = run(f"{base}/{name}", args.items, args.rounds)
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"| database | {args.items} items stored, median s | worst s | all duplicates, median s |")
    print("|---|---:|---:|---:|")
    for database, figures in results.items():
        print(
            f"| {database} | {figures['stored_median_s']:.3f} | {figures['stored_worst_s']:.3f} | "
            f"{figures['duplicates_median_s']:.3f} |"
        )
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
