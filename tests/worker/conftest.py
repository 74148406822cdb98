"""Fixtures for the population worker: a fresh PostgreSQL database per module, a Redis database
flushed around each test, and real Celery worker processes started as subprocesses.

PostgreSQL and Redis are required in CI (CI=true) and skipped elsewhere when they are not running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cds_service.cli import main
from cds_service.database import make_engine, upgrade
from cds_service.population.tables import PopulationAssessment, PopulationChunk
from tests.conftest import scratch_postgres, unavailable
from worker import population, tasks

ROOT = Path(__file__).resolve().parents[2]
# Redis databases these tests may use (other tests use 0, 14 and 15); a test session claims one that no
# other session on this machine holds, so two runs at once never consume each other's tasks
REDIS_DBS = tuple(int(n) for n in os.environ.get("SPINE_CDS_TEST_REDIS_DBS", "13,12,11,10").split(","))
REDIS_CLAIMS_URL = "redis://127.0.0.1:6379/1"
TODAY = "2026-11-24"  # hooks.synthetic.Factory's default day, so profiles meet their intended outcome


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test module, at the newest schema; dropped afterwards."""
    with scratch_postgres("spine_cds_worker") as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        forget_worker_context()


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], Engine]]:
    """Engines on a database URL for the test's own reads, disposed afterwards."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = make_engine(url)
        upgrade(engine)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def forget_worker_context() -> None:
    """Drop the engines that worker.tasks cached in this process (eager runs), so none outlives its database."""
    tasks.forget_contexts()
    tasks._as_of.cache_clear()


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number claimed for this test session (a key with an expiry, set only if absent)."""
    import redis

    claims = redis.Redis.from_url(REDIS_CLAIMS_URL, socket_connect_timeout=3)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    try:
        claimed = next((n for n in REDIS_DBS if claims.set(f"spine-cds-tests:redis-db:{n}", token, nx=True, ex=3600)), None)
    except redis.exceptions.ConnectionError as exc:
        unavailable(f"Redis not reachable: {exc}")
    if claimed is None:
        pytest.fail(f"every test Redis database {REDIS_DBS} is claimed by another test session")
    yield claimed
    key = f"spine-cds-tests:redis-db:{claimed}"
    if claims.get(key) == token.encode():
        claims.delete(key)
    claims.close()


@pytest.fixture
def redis_url(redis_db: int) -> Iterator[str]:
    """The session's Redis database, empty before and after the test."""
    import redis

    url = f"redis://127.0.0.1:6379/{redis_db}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def settings_env(**values: Any) -> dict[str, str]:
    """The process environment without any SPINE_CDS_ setting of the caller's, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_CDS_")}
    env.update({f"SPINE_CDS_{k.upper()}": str(v) for k, v in values.items() if v is not None})
    return env


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy (a real external process reaching a state); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (the main process and its prefork child)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.alive:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.handle.close()


def control_app(env: dict[str, str]) -> Celery:
    """A Celery app on the workers' broker for pings and stats, not made the current app of this process."""
    return Celery("spine_cds_test_control", broker=env["SPINE_CDS_REDIS_URL"], set_as_current=False)


def tasks_done(env: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per worker, how many tasks of each name it has run (`celery inspect stats`)."""
    app = control_app(env)
    try:
        stats = app.control.inspect(timeout=1.0).stats() or {}
    finally:
        app.close()
    return {name: dict(s.get("total", {})) for name, s in stats.items()}


@dataclass
class Workers:
    """Real `celery -A worker.app worker` processes, each in a session of its own, stopped at teardown."""

    env: dict[str, str]
    logs: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str) -> WorkerProcess:
        log = self.logs / f"{name}-{len(self.started)}.log"
        handle = log.open("wb")
        command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker",
            "--concurrency", "1", "--pool", "prefork", "-n", f"{name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        worker = WorkerProcess(name, process, log, handle)
        self.started.append(worker)
        return worker

    def wait_ready(self, *workers: WorkerProcess, timeout: float = 60) -> None:
        """Until every worker answers a ping over the broker (it consumes from then on)."""
        app = control_app(self.env)
        host = socket.gethostname()
        waiting = {f"{w.name}@{host}": w for w in workers}

        def all_answered() -> bool:
            for worker in waiting.values():
                if not worker.alive:
                    pytest.fail(f"worker {worker.name} exited:\n{worker.log.read_text(errors='replace')[-3000:]}")
            replies = app.control.ping(destination=list(waiting), timeout=0.5) or []
            for reply in replies:
                for name in reply:
                    waiting.pop(name, None)
            return not waiting

        try:
            wait_for(all_answered, timeout, f"workers {sorted(waiting)} to answer")
        finally:
            app.close()

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Workers]]:
    made: list[Workers] = []

    def make(env: dict[str, str]) -> Workers:
        logs = tmp_path / "worker-logs"
        logs.mkdir(exist_ok=True)
        workers = Workers(env, logs)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        workers.stop_all()


# -- the spine-cds command -----------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`spine-cds ARGS` as its own process (the Redis-backed Celery app stays out of the test process)."""
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"spine-cds {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def invoke_cli(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> Result:
    """`spine-cds ARGS` in this process (eager Celery: no Redis in `env`), through click's runner."""
    for name in [k for k in os.environ if k.startswith("SPINE_CDS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SPINE_CDS_"):
            monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def job_id_of(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("job ") and " created for " in line:
            return line.split()[1]
    raise AssertionError(f"no job id in:\n{output}")


# -- what the database holds for a job ------------------------------------------------------------


def assessment_rows(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(
                select(PopulationAssessment).where(PopulationAssessment.job_id == job_id).order_by(PopulationAssessment.id)
            )
        ]


def chunk_rows(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(
                select(PopulationChunk).where(PopulationChunk.job_id == job_id).order_by(PopulationChunk.number)
            )
        ]


def count_assessments(engine: Engine, job_id: str) -> tuple[int, int]:
    """(rows, distinct patients) stored for a job."""
    with engine.connect() as connection:
        total, distinct = connection.execute(
            select(func.count(), func.count(PopulationAssessment.patient_id.distinct())).where(
                PopulationAssessment.job_id == job_id
            )
        ).one()
    return int(total), int(distinct)


def assert_scored_exactly_once(engine: Engine, job_id: str, patients: int) -> dict[str, Any]:
    """The job is done, every chunk once, every patient once: no row missing, none twice."""
    current = population.job(engine, job_id)
    assert current is not None
    assert current["status"] == "done", current
    assert current["chunks_done"] == current["chunks_total"] > 0, current
    assert current["patients_scored"] + current["patients_failed"] == patients, current
    assert count_assessments(engine, job_id) == (patients, patients)
    chunks = chunk_rows(engine, job_id)
    assert len(chunks) == current["chunks_total"]
    assert all(c["status"] == "done" for c in chunks)
    assert sum(c["patients"] for c in chunks) == patients
    return current
