"""Population scoring end to end: `spine-cds population score` on two real Celery workers, in patients/s.

    python3 bench/bench_population.py                       # PostgreSQL and SQLite, 10,000 patients x ~100 resources
    python3 bench/bench_population.py --database postgresql --rounds 1
    python3 bench/bench_population.py --quick               # 1,000 patients, one round: a smoke run

The export is made once by `hooks.synthetic.write_bulk_export` (every profile but `noisy-record`, padded
with encounters, immunisations and vital signs to about 100 resources a patient, each resource type over
4 NDJSON files) and kept under bench/results/ (git-ignored), so generation is never timed.

Per database: a fresh database, two workers (`celery -A worker.app worker --concurrency 1 --pool prefork`)
on a Redis database of their own, one untimed warm-up job (the workers load the model on their first
task), then `--rounds` timed runs of `spine-cds population score EXPORT` as a subprocess, from its start
to its exit (it follows the job to the end). The job's own time (its row's created_at to its last update)
is reported beside it. The floor is `orjson.loads` of every line of the same files in one process (page
cache warm): no reader of this export can go faster on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from hooks.synthetic import PROFILES, write_bulk_export  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TODAY = "2026-11-24"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the export -------------------------------------------------------------------------------------


def cached_export(patients: int, resources: int, split_files: int, gzip: bool) -> tuple[Path, dict[str, Any]]:
    """The export for these sizes, generated once into bench/results/ and reused."""
    name = f"population-export-{patients}x{resources}-{split_files}{'-gz' if gzip else ''}"
    folder = RESULTS / name
    marker = folder / "export.json"  # not an .ndjson file, so not read as input
    if marker.exists():
        return folder, json.loads(marker.read_text())
    log(f"generating {patients} patients x ~{resources} resources into {folder} (once) ...")
    started = time.perf_counter()
    profiles = [p for p in PROFILES if p.name != "noisy-record"]
    export = write_bulk_export(folder, patients, resources, seed=2026, profiles=profiles, split_files=split_files, gzip=gzip)
    about = {
        "patients": patients,
        "resources": export.resources,
        "files": len(export.files),
        "bytes": sum(p.stat().st_size for p in export.files),
        "worklist": len(export.worklist),
        "generated_seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(about, indent=2))
    return folder, about


def floor(folder: Path) -> dict[str, float]:
    """orjson.loads of every line, one process; the files are read once before timing (page cache)."""
    import gzip as gzip_module

    files = sorted(p for p in folder.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))

    def lines() -> Iterator[bytes]:
        for path in files:
            with gzip_module.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as handle:
                yield from handle

    for _ in lines():
        pass
    loads, count = orjson.loads, 0
    started = time.perf_counter()
    for line in lines():
        loads(line)
        count += 1
    return {"seconds": time.perf_counter() - started, "lines": count}


# -- services ---------------------------------------------------------------------------------------


@contextmanager
def fresh_database(kind: str, admin_url: str, instance: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{instance / 'bench.sqlite3'}"
        return
    import psycopg

    name = f"spine_cds_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_env(**values: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_CDS_")}
    env.update({f"SPINE_CDS_{k.upper()}": str(v) for k, v in values.items() if v is not None})
    return env


@contextmanager
def workers(env: dict[str, str], count: int, logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` worker processes of concurrency 1, each in a session of its own; stopped (SIGTERM) afterwards."""
    from celery import Celery

    started: list[subprocess.Popen[bytes]] = []
    handles = []
    try:
        for n in range(1, count + 1):
            handle = (logs / f"worker-{n}.log").open("wb")
            handles.append(handle)
            command = [
                sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--concurrency", "1", "--pool", "prefork",
                "-n", f"bench{n}@%h", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            ]  # fmt: skip
            started.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            )
        control = Celery("bench-control", broker=env["SPINE_CDS_REDIS_URL"], set_as_current=False)
        waiting = {f"bench{n}@{socket.gethostname()}" for n in range(1, count + 1)}
        deadline = time.monotonic() + 60
        while waiting:
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                raise RuntimeError(f"workers did not start; see {logs}")
            for reply in control.control.ping(destination=sorted(waiting), timeout=0.5) or []:
                waiting -= set(reply)
        control.close()
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for handle in handles:
            handle.close()


def score(env: dict[str, str], export: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "population", "score", str(export), "--today", TODAY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0 or ": done;" not in result.stdout:
        raise RuntimeError(f"spine-cds population score failed:\n{result.stdout}\n{result.stderr}")
    job_id = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("job ") and " created " in line)
    return seconds, job_id


def job_row(database_url: str, job_id: str) -> dict[str, Any]:
    from cds_service.database import make_engine
    from worker import population

    engine = make_engine(database_url)
    try:
        found = population.job(engine, job_id)
    finally:
        engine.dispose()
    assert found is not None
    return found


def run_database(kind: str, args: argparse.Namespace, export: Path, about: dict[str, Any], warmup: Path) -> dict[str, Any]:
    import redis

    broker = redis.Redis.from_url(args.redis_url)
    broker.flushdb()
    with tempfile.TemporaryDirectory(prefix="bench-population-") as scratch:
        instance = Path(scratch) / "instance"
        instance.mkdir()
        with fresh_database(kind, args.postgres_admin, instance) as database_url:
            env = settings_env(
                redis_url=args.redis_url,
                database_url=database_url,
                instance_path=instance,
                population_chunk_size=args.chunk_size,
            )
            with workers(env, args.workers, Path(scratch)):
                log(f"[{kind}] warm-up job ...")
                score(env, warmup)
                runs = []
                for n in range(args.rounds):
                    seconds, job_id = score(env, export)
                    job = job_row(database_url, job_id)
                    assert job["status"] == "done" and job["patients_scored"] == about["patients"], job
                    assert job["worklisted"] == about["worklist"], (job["worklisted"], about["worklist"])
                    job_seconds = (job["updated_at"] - job["created_at"]).total_seconds()
                    runs.append({"seconds": seconds, "job_seconds": job_seconds, "chunks": job["chunks_total"]})
                    log(
                        f"[{kind}] round {n + 1}: {seconds:.2f} s end to end ({about['patients'] / seconds:.0f} patients/s), "
                        f"job {job_seconds:.2f} s, {job['chunks_total']} chunks"
                    )
    broker.flushdb()
    broker.close()
    median = statistics.median(r["seconds"] for r in runs)
    median_job = statistics.median(r["job_seconds"] for r in runs)
    return {
        "database": kind,
        "runs": runs,
        "seconds": median,
        "job_seconds": median_job,
        "patients_per_second": about["patients"] / median,
        "job_patients_per_second": about["patients"] / median_job,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--resources", type=int, default=100, help="resources per patient (about)")
    parser.add_argument("--split-files", type=int, default=4, help="NDJSON files per resource type")
    parser.add_argument("--gzip", action="store_true", help="gzip the export's files")
    parser.add_argument("--database", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9", help="a spare database, flushed before and after")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=250, help="patients per task (the setting's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 patients, one round")
    parser.add_argument("--json", type=Path, default=RESULTS / "population.json")
    parser.add_argument("--no-json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.rounds = 1_000, 1

    RESULTS.mkdir(parents=True, exist_ok=True)
    export, about = cached_export(args.patients, args.resources, args.split_files, args.gzip)
    warmup, _ = cached_export(50, args.resources, 1, False)
    log(
        f"export: {about['patients']} patients, {about['resources']} resources, {about['bytes'] / 2**20:.0f} MiB in {about['files']} files"
    )
    base = floor(export)
    log(f"floor: {base['seconds']:.2f} s for {base['lines']} lines")

    kinds = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
    rows = [run_database(kind, args, export, about, warmup) for kind in kinds]

    floor_rate = about["patients"] / base["seconds"]
    print(
        f"\n{about['patients']} patients, {about['resources']} resources ({about['bytes'] / 2**20:.0f} MiB, {about['files']} files)"
    )
    print(f"{args.workers} workers x concurrency 1, chunks of {args.chunk_size}, median of {args.rounds} rounds\n")
    print("| database | end to end s | patients/s | job s | patients/s (job) | floor s | floor patients/s | floor / end to end |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['database']} | {row['seconds']:.2f} | {row['patients_per_second']:.0f} | {row['job_seconds']:.2f} | "
            f"{row['job_patients_per_second']:.0f} | {base['seconds']:.2f} | {floor_rate:.0f} | "
            f"{floor_rate / row['patients_per_second']:.1f}x |"
        )
    if not args.no_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "export": about,
                    "floor": base,
                    "workers": args.workers,
                    "chunk_size": args.chunk_size,
                    "rows": rows,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
