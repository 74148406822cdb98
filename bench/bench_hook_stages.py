"""Where one hook call's CPU goes: each stage of the service's path timed alone, in one process.

    python3 bench/bench_hook_stages.py                                                   # SQLite decision log
    python3 bench/bench_hook_stages.py --database postgresql://postgres@127.0.0.1:5432/test

The stages are the real components of an app built by `create_app` (the same settings as
`bench_hooks.py`), each called on its own for every request of a run of distinct requests: JWT
verification (ES384 and RS384), the JSON parse, the keyed digest of the inputs, the assessment
(FHIR reading with validation, scoring, cards) and the decision-log append with its chain link, then
the whole call through Flask's test client (everything but the HTTP server). CPU time per call is
`time.process_time` over the run divided by the calls; for the append on PostgreSQL, the database
server's own CPU (its processes in /proc) is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_audit import decision_row, sample_card  # noqa: E402
from bench.bench_hooks import ISSUER, SERVICE_PATH, Signer, cpu_seconds, make_body  # noqa: E402
from cds_service.app import create_app  # noqa: E402
from cds_service.components import components  # noqa: E402
from hooks.cards import CardOptions  # noqa: E402
from hooks.services import SERVICES_BY_ID, evaluate  # noqa: E402


def measure(calls: int, step: Callable[[int], Any]) -> tuple[float, float]:
    """(CPU µs per call, database-server CPU µs per call) over `calls` calls after 100 untimed ones."""
    for i in range(100):
        step(calls + i)
    database = cpu_seconds()["database"]
    started = time.process_time()
    for i in range(calls):
        step(i)
    cpu = (time.process_time() - started) / calls * 1e6
    return cpu, (cpu_seconds()["database"] - database) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=None, help="decision log URL (default: SQLite in a temporary folder)")
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    signers = {alg: Signer(alg) for alg in ("ES384", "RS384")}
    body = make_body(args.resources)
    bodies = [body.replace(b"HOOK-INSTANCE", str(uuid.uuid4()).encode()) for _ in range(args.calls + 100)]
    with tempfile.TemporaryDirectory() as instance:
        keys = [key for signer in signers.values() for key in signer.jwks["keys"]]
        app = create_app(
            {
                "instance_path": instance,
                "database_url": args.database or f"sqlite:///{instance}/stages.sqlite3",
                "trusted_issuers": {ISSUER: {"jwks": {"keys": keys}}},
                "pseudonym_key": "bench-key",
                "log_level": "WARNING",
            }
        )
        audience = "http://localhost" + SERVICE_PATH
        tokens = {alg: signer.tokens(audience, 2 * (args.calls + 100)) for alg, signer in signers.items()}
        with app.app_context():
            parts = components()
        service = SERVICES_BY_ID["spine-knee-patient-view"]
        # parsed ahead and taken in turn, so each call reads objects not in the CPU caches, as a real call does
        documents = [orjson.loads(bodies[i]) for i in range(200)]
        card, assessment = sample_card()
        rows = [decision_row(card, assessment) for _ in range(args.calls + 100)]
        client = app.test_client()
        token_iter = iter(tokens["ES384"][args.calls + 100 :])

        def whole_call(i: int) -> None:
            headers = {"Authorization": f"Bearer {next(token_iter)}", "Content-Type": "application/json"}
            response = client.post(SERVICE_PATH, data=bodies[i], headers=headers)
            assert response.status_code == 200, response.data

        stages: list[tuple[str, Callable[[int], Any]]] = [
            ("JWT verification, ES384", lambda i: parts.authenticator.verify(f"Bearer {tokens['ES384'][i]}", audience)),
            ("JWT verification, RS384", lambda i: parts.authenticator.verify(f"Bearer {tokens['RS384'][i]}", audience)),
            ("JSON parse of the body", lambda i: orjson.loads(bodies[i])),
            ("keyed digest of the inputs", lambda i: parts.hooks.input_digest(documents[i % 200])),
            (
                "assessment: reading, validation, scoring, cards",
                lambda i: evaluate(
                    parts.model,
                    service,
                    documents[i % 200]["context"],
                    documents[i % 200]["prefetch"],
                    CardOptions(docs_url="http://localhost/model"),
                    today=datetime.now(UTC).date(),
                    instance=str(i),
                ),
            ),
            ("decision-log append with chain link, committed", lambda i: parts.decision_log.append(rows[i])),
            ("whole call through Flask (ES384), without HTTP", whole_call),
        ]
        results = []
        for name, step in stages:
            cpu, database = measure(args.calls, step)
            results.append({"stage": name, "cpu_us": round(cpu, 1), "database_cpu_us": round(database, 1)})
            print(f"{name}: {cpu:.0f} µs", file=sys.stderr)
    kind = "sqlite" if not args.database or args.database.startswith("sqlite") else "postgresql"
    print(f"\n{args.resources}-resource prefetch, {kind} decision log, {args.calls} calls per stage, CPU µs per call")
    print(f"{'stage':50} {'service':>8} {'database':>9}")
    for row in results:
        print(f"{row['stage']:50} {row['cpu_us']:>8} {row['database_cpu_us']:>9}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"hook-stages-{kind}.json").write_text(json.dumps({"database": kind, "stages": results}, indent=2))


if __name__ == "__main__":
    main()
