"""Fuzz and fault runs against the service under gunicorn, on SQLite and PostgreSQL.

    python3 bench/fuzz_and_faults.py                       # 10,000 fuzzed requests per database, then the kill runs
    python3 bench/fuzz_and_faults.py --requests 2000 --only fuzz

Fuzz: every request carries a valid, fresh ES384 token; its body is a valid patient-view call or
feedback body with one to three fields replaced by hostile JSON (control characters, strings past their
columns, integers past 64 bits, deep nesting, CRLF and unparseable hosts in URLs, wrong types). Reported:
answers by status, 5xx answers, answers slower than 5 s, and whether every hook call that got past
authentication has its decision row (each 200 with exactly the cards the client saw).

Faults (the servers killed are the run's own, tests/servers.py): the service with a Redis of its own,
killed after a third of the calls and restarted after two thirds; then with a PostgreSQL of its own,
the same; then that PostgreSQL stopped (SIGSTOP: connections open, nothing answers) and continued.
Reported: answers by status and the longest answer during each phase.

Asserts nothing about time; prints the figures (and JSON on stderr).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_hooks import ISSUER, Signer, gunicorn  # noqa: E402
from cds_service.database import make_engine, upgrade  # noqa: E402
from hooks.synthetic import generate, prefetch_for  # noqa: E402
from tests.fuzzing import paths, replaced  # noqa: E402
from tests.servers import ScratchPostgres, ScratchRedis  # noqa: E402

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
FEEDBACK = PATIENT_VIEW + "/feedback"
HOSTILE: list[Any] = [
    None, True, 0, -1, 2**64, -(2**70), 1e308, "", "a" * 300, "b" * 5000, "x\u0000y", "\u001f", "\r\nX: 1",
    "http://[::1", "https://h:99999/", "https:///x", "Patient/../Observation", "\U0001f600" * 50, [], {}, [[[[]]]],
    {"resourceType": "Bundle", "entry": "nope"}, {"resourceType": "OperationOutcome"},
]  # fmt: skip


def patient_view(seed: int) -> dict[str, Any]:
    resources = generate("radiculopathy-knee-pain", seed=seed)
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": resources[0]["id"]},
        "prefetch": prefetch_for(resources),
    }


def mutate(document: Any, rng: random.Random) -> Any:
    out = document
    for _ in range(rng.randint(1, 3)):
        out = replaced(out, rng.choice(paths(out)), rng.choice(HOSTILE))
    if rng.random() < 0.03:
        nested: Any = []
        for _ in range(rng.randint(240, 320)):
            nested = [nested]
        out["extension"] = {"nest": nested}
    return out


class Caller:
    def __init__(self, base: str, signer: Signer) -> None:
        self.base = base
        self.signer = signer
        self.client = httpx.Client(base_url=base, timeout=30)

    def post(self, path: str, body: Any) -> tuple[int, float, Any]:
        (token,) = self.signer.tokens(self.base + path, 1)
        started = time.perf_counter()
        try:
            response = self.client.post(
                path,
                content=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        except httpx.HTTPError:
            return -1, time.perf_counter() - started, None
        elapsed = time.perf_counter() - started
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return response.status_code, elapsed, payload


def env_for(signer: Signer, instance: Path, database: str | None, redis: str | None = None) -> dict[str, str]:
    env = {
        "SPINE_CDS_INSTANCE_PATH": str(instance),
        "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": signer.jwks}}),
        "SPINE_CDS_PSEUDONYM_KEY": "bench-pseudonym-key",
    }
    if database:
        env["SPINE_CDS_DATABASE_URL"] = database
    if redis:
        env["SPINE_CDS_REDIS_URL"] = redis
    return env


def fuzz(database: str, label: str, requests: int, seed: int) -> dict[str, Any]:
    signer = Signer()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory:
        url = database if database != "sqlite" else f"sqlite:///{directory}/fuzz.sqlite3"
        engine = make_engine(url)
        upgrade(engine)
        with gunicorn("cds_service.wsgi:app", env_for(signer, Path(directory), url), 2, 2) as base:
            caller = Caller(base, signer)
            (card,) = caller.post(PATIENT_VIEW, patient_view(seed=1))[2]["cards"]
            feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-24T10:00:00Z"}]}
            bodies = []
            for n in range(requests):
                if n % 5 == 4:
                    bodies.append((FEEDBACK, mutate(feedback, rng)))
                else:
                    bodies.append((PATIENT_VIEW, mutate(patient_view(seed=1000 + n), rng)))
            with engine.connect() as connection:
                rows_before = connection.execute(text("SELECT count(*) FROM decisions")).scalar_one()
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda item: (item[0], *caller.post(*item)), bodies))
            with engine.connect() as connection:
                rows_after = connection.execute(text("SELECT count(*) FROM decisions")).scalar_one()
                # a mutation can give several calls one hookInstance: each answer must match one of its rows
                logged: dict[str, list[list[str]]] = {}
                for instance, stored in connection.execute(
                    text("SELECT hook_instance, card_uuids FROM decisions WHERE status_code = 200")
                ):
                    logged.setdefault(instance, []).append(json.loads(stored) if isinstance(stored, str) else list(stored))
        engine.dispose()
    statuses = Counter(status for _, status, _, _ in results)
    hook_calls = sum(1 for path, status, _, _ in results if path == PATIENT_VIEW and status != 401)
    unmatched = 0
    for (path, status, _, payload), (_, body) in zip(results, bodies, strict=True):
        if path == PATIENT_VIEW and status == 200:
            cards = [c["uuid"] for c in payload["cards"]]
            rows = logged.get(body.get("hookInstance"), []) if isinstance(body, dict) else []
            unmatched += cards not in rows
    return {
        "database": label,
        "requests": requests,
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "dropped": statuses.get(-1, 0),
        "slower_than_5s": sum(1 for _, _, elapsed, _ in results if elapsed > 5),
        "hook_calls": hook_calls,
        "decision_rows_written": rows_after - rows_before,
        "200s_without_their_row_and_cards": unmatched,
    }


def fault(kind: str, calls: int) -> dict[str, Any]:
    """`kind`: redis (killed), postgres (killed) or postgres-stopped (SIGSTOP, then SIGCONT)."""
    signer = Signer()
    phases: dict[str, Counter[int]] = {"before": Counter(), "down": Counter(), "back": Counter()}
    longest = dict.fromkeys(phases, 0.0)
    with tempfile.TemporaryDirectory() as directory:
        redis_server = postgres = None
        database = redis_url = None
        if kind == "redis":
            redis_server = ScratchRedis(Path(directory))
            redis_server.start()
            redis_url = redis_server.url
        else:
            postgres = ScratchPostgres()
            postgres.init()
            postgres.start()
            database = postgres.url
            engine = make_engine(database)
            upgrade(engine)
            engine.dispose()
        try:
            with gunicorn("cds_service.wsgi:app", env_for(signer, Path(directory), database, redis_url), 2, 2) as base:
                caller = Caller(base, signer)
                server: Any = redis_server or postgres
                down, up = (server.pause, server.resume) if kind == "postgres-stopped" else (server.kill, server.start)
                for n in range(calls):
                    if n == calls // 3:
                        down()
                    if n == 2 * calls // 3:
                        up()
                    phase = "before" if n < calls // 3 else "down" if n < 2 * calls // 3 else "back"
                    status, elapsed, _ = caller.post(PATIENT_VIEW, patient_view(seed=5000 + n))
                    phases[phase][status] += 1
                    longest[phase] = max(longest[phase], elapsed)
        finally:
            if redis_server:
                redis_server.kill()
            if postgres:
                postgres.remove()
    return {
        "fault": kind,
        "calls": calls,
        **{k: dict(sorted(v.items())) for k, v in phases.items()},
        "longest_ms": {k: round(v * 1000, 1) for k, v in longest.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--fault-calls", type=int, default=600)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--only", choices=["fuzz", "faults"])
    args = parser.parse_args()
    results: dict[str, Any] = {"fuzz": [], "faults": []}
    if args.only != "faults":
        results["fuzz"].append(fuzz("sqlite", "sqlite", args.requests, seed=1))
        name = f"bench_fuzz_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            results["fuzz"].append(fuzz(f"{args.postgres.rsplit('/', 1)[0]}/{name}", "postgresql", args.requests, seed=2))
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if args.only != "fuzz":
        results["faults"] = [fault(kind, args.fault_calls) for kind in ("redis", "postgres", "postgres-stopped")]
    for row in results["fuzz"]:
        print(
            f"fuzz {row['database']}: {row['requests']} requests, statuses {row['statuses']}, 5xx {row['server_errors']}, "
            f"dropped {row['dropped']}, >5 s {row['slower_than_5s']}, hook calls past auth {row['hook_calls']}, "
            f"decision rows {row['decision_rows_written']}, 200s without their row {row['200s_without_their_row_and_cards']}"
        )
    for row in results["faults"]:
        print(
            f"{row['fault']}: {row['calls']} calls; before {row['before']}, down {row['down']}, back {row['back']}; "
            f"longest answer ms {row['longest_ms']}"
        )
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
