"""Population jobs on Redis with real Celery worker processes: completion, a worker SIGKILLed mid-job,
and a job resumed after every worker (and the broker's queue) was lost.

Each worker is `celery -A worker.app worker --concurrency 1 --pool prefork` in a session of its own, on a
Redis database flushed before and after each test and a PostgreSQL database made for this module. Waits
poll the job's row against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine

from hooks.synthetic import PROFILES, BulkExport, write_bulk_export
from tests.worker.conftest import (
    TODAY,
    Workers,
    assert_scored_exactly_once,
    assessment_rows,
    chunk_rows,
    job_id_of,
    run_cli,
    settings_env,
    tasks_done,
    wait_for,
)
from worker import population

JOB_DEADLINE = 180.0


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instance folder the CLI and every worker share (partition files, worklists)."""
    return tmp_path_factory.mktemp("instance")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> BulkExport:
    return write_bulk_export(tmp_path_factory.mktemp("small-export"), 300, 20, seed=21, split_files=2, gzip=True)


@pytest.fixture(scope="module")
def large_export(tmp_path_factory: pytest.TempPathFactory) -> BulkExport:
    """2,000 patients of about 20 resources: 100 chunks of 20, a few seconds of work for two workers."""
    profiles = [p for p in PROFILES if p.name != "noisy-record"]
    return write_bulk_export(tmp_path_factory.mktemp("large-export"), 2000, 20, seed=22, profiles=profiles, split_files=4)


@pytest.fixture
def engine(postgres_url: str, engine_for: Callable[[str], Engine]) -> Engine:
    return engine_for(postgres_url)


@pytest.fixture
def env_for(redis_url: str, postgres_url: str, instance: Path) -> Callable[..., dict[str, str]]:
    def make(**extra: Any) -> dict[str, str]:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "database_url": postgres_url,
            "instance_path": instance,
            "population_chunk_size": 20,
        }
        values.update(extra)
        return settings_env(**values)

    return make


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _job(engine: Engine, job_id: str) -> dict[str, Any]:
    current = population.job(engine, job_id)
    assert current is not None
    return current


def _wait_done(engine: Engine, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        current = _job(engine, job_id)
        assert current["status"] != "failed", current
        return current if current["status"] == "done" else None

    result: dict[str, Any] = wait_for(finished, JOB_DEADLINE, f"job {job_id} to finish", interval=0.1)
    return result


def _in_flight(engine: Engine, job_id: str) -> list[int]:
    """Chunks a worker has started (attempts counted) but not stored yet."""
    return [c["number"] for c in chunk_rows(engine, job_id) if c["status"] == "pending" and c["attempts"] > 0]


def _wait_mid_scoring(engine: Engine, job_id: str, at_least: int, busy: int = 0) -> dict[str, Any]:
    """Until `at_least` chunks are scored and `busy` chunks are being scored; fails if the job ends first.

    Waiting for chunks in flight, rather than reacting to a chunk just stored, makes the kill land while
    the workers are scoring, not in the moment between a chunk's commit and its acknowledgement.
    """

    def scoring() -> dict[str, Any] | None:
        current = _job(engine, job_id)
        assert current["status"] in ("splitting", "scoring"), f"the job ended before it could be interrupted: {current}"
        if current["status"] != "scoring" or current["chunks_done"] < at_least:
            return None
        return current if len(_in_flight(engine, job_id)) >= busy else None

    result: dict[str, Any] = wait_for(scoring, 120, f"job {job_id} to score {at_least} chunks", interval=0.01)
    return result


def _submit(env: dict[str, str], export: BulkExport) -> str:
    result = run_cli(env, "population", "score", str(export.directory), "--today", TODAY, "--no-wait")
    return job_id_of(result.stdout)


def test_two_workers_score_a_job_and_status_reports_it(
    env_for: Callable[..., dict[str, str]],
    workers_factory: Callable[[dict[str, str]], Workers],
    engine: Engine,
    small_export: BulkExport,
    instance: Path,
) -> None:
    env = env_for()
    workers = workers_factory(env)
    first, second = workers.start("w1"), workers.start("w2")
    workers.wait_ready(first, second)

    # `score` follows the job to its end when it runs on workers
    result = run_cli(env, "population", "score", str(small_export.directory), "--today", TODAY, timeout=JOB_DEADLINE)
    job_id = job_id_of(result.stdout)
    patients = len(small_export.profiles)
    current = assert_scored_exactly_once(engine, job_id, patients)
    assert current["patients_scored"] == patients and current["patients_failed"] == 0
    assert current["chunks_total"] == 15
    assert current["worklisted"] == len(small_export.worklist)
    worklisted = {r["patient_id"] for r in assessment_rows(engine, job_id) if r["worklist"]}
    assert worklisted == small_export.worklist
    folder = population.job_dir(instance, job_id)
    assert len((folder / "worklist.ndjson").read_bytes().splitlines()) == len(small_export.worklist)

    # both worker processes took chunks, and every chunk was scored once
    done = tasks_done(env)
    scored = {name: counts.get("population.score_chunk", 0) for name, counts in done.items()}
    assert len(scored) == 2 and all(scored.values()), done
    assert sum(scored.values()) == current["chunks_total"]
    assert all(c["attempts"] == 1 for c in chunk_rows(engine, job_id))

    status = run_cli(env, "population", "status", job_id)
    assert (
        f"job {job_id}: done; {patients} patients scored, 0 failed, {len(small_export.worklist)} on the worklist" in status.stdout
    )
    assert str(folder / "worklist.csv") in status.stdout


def test_a_worker_killed_mid_job_loses_nothing_and_scores_nothing_twice(
    env_for: Callable[..., dict[str, str]],
    workers_factory: Callable[[dict[str, str]], Workers],
    engine: Engine,
    large_export: BulkExport,
    broker: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a short visibility timeout: the task the killed worker held comes back within seconds
    env = env_for(worker_visibility_timeout=5)
    workers = workers_factory(env)
    victim, survivor = workers.start("w1"), workers.start("w2")
    workers.wait_ready(victim, survivor)

    job_id = _submit(env, large_export)
    before = _wait_mid_scoring(engine, job_id, at_least=5, busy=2)  # both workers inside a chunk
    victim.kill()  # SIGKILL to the worker's process group: its main process and its prefork child
    at_kill = _job(engine, job_id)
    assert not victim.alive and survivor.alive
    assert at_kill["chunks_done"] < at_kill["chunks_total"], "the job finished before the kill: make it bigger"

    current = _wait_done(engine, job_id)
    patients = len(large_export.profiles)
    assert_scored_exactly_once(engine, job_id, patients)
    assert current["patients_scored"] == patients and current["chunks_done"] == current["chunks_total"] == 100
    assert current["worklisted"] == len(large_export.worklist)
    # the task the killed worker held was given back and acknowledged by the survivor
    wait_for(lambda: broker.hlen("unacked") == 0, 60, "the killed worker's task to be redelivered and acknowledged")
    redelivered = {c["number"]: c["attempts"] for c in chunk_rows(engine, job_id) if c["attempts"] > 1}
    assert_scored_exactly_once(engine, job_id, patients)
    with capsys.disabled():
        print(
            f"\n[sigkill] killed w1 with {before['chunks_done']}-{at_kill['chunks_done']} of {at_kill['chunks_total']} chunks "
            f"done; chunks started more than once (number: attempts): {redelivered}; "
            f"{patients} rows, {patients} distinct patients"
        )


def test_resume_after_every_worker_and_the_queue_were_lost(
    env_for: Callable[..., dict[str, str]],
    workers_factory: Callable[[dict[str, str]], Workers],
    engine: Engine,
    large_export: BulkExport,
    broker: redis.Redis,
    instance: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = env_for(worker_visibility_timeout=5)
    workers = workers_factory(env)
    first, second = workers.start("w1"), workers.start("w2")
    workers.wait_ready(first, second)

    job_id = _submit(env, large_export)
    _wait_mid_scoring(engine, job_id, at_least=5, busy=2)
    first.kill()
    second.kill()
    # the broker restarts without persistence (as CI runs it): queued and unacknowledged tasks are gone
    broker.flushdb()
    stopped = _job(engine, job_id)
    assert stopped["status"] == "scoring" and 0 < stopped["chunks_done"] < stopped["chunks_total"], stopped
    kept = {r["id"]: (r["patient_id"], r["chunk"]) for r in assessment_rows(engine, job_id)}
    done_chunks = {c["number"] for c in chunk_rows(engine, job_id) if c["status"] == "done"}
    assert len(kept) == sum(c["patients"] for c in chunk_rows(engine, job_id) if c["status"] == "done")

    fresh = workers.start("w3")
    workers.wait_ready(fresh)
    assert _job(engine, job_id)["chunks_done"] == stopped["chunks_done"]  # nothing left to drive the job
    result = run_cli(env, "population", "resume", job_id, timeout=JOB_DEADLINE)
    assert f"job {job_id}: done; {len(large_export.profiles)} patients scored" in result.stdout
    current = assert_scored_exactly_once(engine, job_id, len(large_export.profiles))
    # what was scored before the restart was kept as it was, not scored again
    after = {r["id"]: (r["patient_id"], r["chunk"]) for r in assessment_rows(engine, job_id)}
    assert {i: after[i] for i in kept} == kept
    assert all(c["attempts"] == 1 for c in chunk_rows(engine, job_id) if c["number"] in done_chunks)

    # resuming a finished job changes nothing and enqueues nothing
    folder = population.job_dir(instance, job_id)
    worklist_stat = (folder / "worklist.csv").stat()
    chunks = chunk_rows(engine, job_id)
    again = run_cli(env, "population", "resume", job_id)
    assert f"job {job_id}: done;" in again.stdout
    assert broker.llen("celery") == 0
    assert _job(engine, job_id) == current
    assert chunk_rows(engine, job_id) == chunks
    assert {r["id"]: (r["patient_id"], r["chunk"]) for r in assessment_rows(engine, job_id)} == after
    assert (folder / "worklist.csv").stat().st_mtime_ns == worklist_stat.st_mtime_ns
    with capsys.disabled():
        print(
            f"\n[resume] both workers killed with {stopped['chunks_done']} of {stopped['chunks_total']} chunks done "
            f"({len(kept)} patients kept); resumed on a fresh worker to {current['chunks_done']} chunks, "
            f"{current['patients_scored']} patients, each once"
        )
