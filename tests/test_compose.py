"""docker-compose.yml: its structure, then every command in it run for real on this machine.

There is no Docker engine here, so each service's command runs as a local process with the compose
host names mapped to the local Redis (a spare database number) and PostgreSQL (a fresh database), the
compose volumes mapped to folders under tmp_path, and each health check run against it as compose
would. Missing Redis, PostgreSQL or redis-server skip these tests, except in CI where they fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shelve
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml

from tests.conftest import scratch_postgres, unavailable

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("web", "worker", "beat")
SERVICES = (*APP_SERVICES, "redis", "postgres")
REDIS_DB = 14  # a spare database number on the local Redis, flushed before and after
SECRET_WORDS = ("KEY", "PASSWORD", "SECRET", "TOKEN")
REQUIRED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}")
START_TIMEOUT = 45.0
# the service and health-check attributes of the Compose Specification (schema/compose-spec.json)
SPEC_SERVICE_KEYS = frozenset(
    """
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name
    cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset
    credential_spec depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname
    entrypoint env_file environment expose extends external_links extra_hosts gpus group_add healthcheck hostname
    image init ipc isolation label_file labels links logging mac_address mem_limit mem_reservation mem_swappiness
    memswap_limit models network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform ports
    post_start pre_stop privileged profiles provider pull_policy pull_refresh_after read_only restart runtime
    scale secrets security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty
    ulimits use_api_socket user userns_mode uts volumes volumes_from working_dir
    """.split()  # noqa: SIM905
)
SPEC_HEALTHCHECK_KEYS = frozenset({"disable", "interval", "retries", "test", "timeout", "start_period", "start_interval"})
DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+")
# images whose default command is the service itself
IMAGE_DEFAULT_COMMANDS = {"postgres": ["postgres"]}


def split_url(url: str) -> tuple[Any, dict[str, str]]:
    """urlsplit of a URL holding `${VAR:?message}` references (whose messages may hold / or ?)."""
    references = {f"ref{n}": m for n, m in enumerate(REQUIRED.findall(url))}
    for token, reference in references.items():
        url = url.replace(reference, token, 1)
    return urlsplit(url), references


# ---------------------------------------------------------------------------------------------------
# Compose variable interpolation (the subset of the Compose Specification this file uses)

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """`$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        current = variables.get(name)
        unset_or_empty = not current if op.startswith(":") else current is None
        if op.endswith("-"):
            return arg if unset_or_empty else str(current)
        if op.endswith("?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op.endswith("+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(one, value)


# ---------------------------------------------------------------------------------------------------
# The file's structure


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = raw["services"]
    return found


def test_the_services_and_named_volumes(raw: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert "version" not in raw  # obsolete in the Compose Specification
    assert sorted(services) == sorted(SERVICES)
    declared = set(raw["volumes"])
    for name, service in services.items():
        assert service.get("volumes"), f"{name} keeps no data on a volume"
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            assert source in declared, f"{name}: {source} is not a named volume"
            assert target.startswith("/"), f"{name}: {target}"
    used = {v.split(":")[0] for s in services.values() for v in s["volumes"]}
    assert used == declared


def test_only_compose_specification_attributes(raw: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert set(raw) - {"name", "services", "volumes"} <= {k for k in raw if k.startswith("x-")}
    for name, service in services.items():
        assert set(service) <= SPEC_SERVICE_KEYS | {"<<"}, f"{name}: {set(service) - SPEC_SERVICE_KEYS}"
        check = service["healthcheck"]
        assert set(check) <= SPEC_HEALTHCHECK_KEYS, name
        durations = [check[k] for k in ("interval", "timeout", "start_period") if k in check]
        durations += [service["stop_grace_period"]] if "stop_grace_period" in service else []
        assert all(isinstance(d, str) and DURATION.fullmatch(d) for d in durations), f"{name}: {durations}"
        assert isinstance(check["retries"], int)
        assert all(isinstance(v, str) for v in (service.get("environment") or {}).values()), name
        for volume in service["volumes"]:
            assert isinstance(volume, str) and len(volume.split(":")) in (2, 3), f"{name}: {volume}"
    assert all(v is None or isinstance(v, dict) for v in raw["volumes"].values())


def test_every_service_has_a_command_health_check_and_restart_policy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        command = service.get("command") or IMAGE_DEFAULT_COMMANDS.get(service.get("image", "").split(":")[0])
        assert isinstance(command, list) and command, f"{name}: a command (exec form) or a known image default"
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck"
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}: healthcheck {key}"
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: restart"


def test_web_worker_and_beat_share_one_image_and_one_environment(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert web["build"]["context"] == "." and web["build"]["dockerfile"] == "Dockerfile"
    assert web["image"].startswith("spine-cds:")
    for name in ("worker", "beat"):
        # merged from the same YAML anchor: the very same objects, not copies that could drift
        assert services[name]["build"] is web["build"]
        assert services[name]["image"] == web["image"]
        assert services[name]["environment"] is web["environment"]
    assert services["worker"]["volumes"] is web["volumes"]  # the population job files, shared
    environment = web["environment"]
    assert environment["SPINE_CDS_REDIS_URL"] == "redis://redis:6379/0"
    database, _ = split_url(environment["SPINE_CDS_DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port, database.username, database.path) == (
        "postgresql",
        "postgres",
        5432,
        "spine",
        "/spine",
    )
    # the instance folder and the anchor file each on a volume, the anchors on their own
    mounts = {v.split(":")[1]: v.split(":")[0] for v in web["volumes"]}
    assert mounts[environment["SPINE_CDS_INSTANCE_PATH"]] == "instance"
    anchor = Path(environment["SPINE_CDS_ANCHOR_PATH"])
    assert mounts[str(anchor.parent)] == "anchors" and anchor.parent != Path(environment["SPINE_CDS_INSTANCE_PATH"])
    schedule = services["beat"]["command"][services["beat"]["command"].index("--schedule") + 1]
    assert any(schedule.startswith(target + "/") for target in (v.split(":")[1] for v in services["beat"]["volumes"]))


def test_dependencies_wait_for_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {"web": {"redis", "postgres"}, "worker": {"redis", "postgres", "web"}, "beat": {"redis"}}
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        assert all(depends[d] == {"condition": "service_healthy"} for d in needs), name
    assert "depends_on" not in services["redis"] and "depends_on" not in services["postgres"]


def test_redis_keeps_every_task(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-[a-z0-9.]+)?", redis["image"])
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_postgres_user_and_database_match_the_url(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:1[56](\.\d+)*(-[a-z0-9.]+)?", postgres["image"])
    env = postgres["environment"]
    url, references = split_url(services["web"]["environment"]["SPINE_CDS_DATABASE_URL"])
    assert env["POSTGRES_USER"] == url.username and env["POSTGRES_DB"] == url.path.lstrip("/")
    assert env["POSTGRES_PASSWORD"] == references[url.password]  # the same required variable
    test = postgres["healthcheck"]["test"]
    assert test[test.index("-U") + 1] == url.username and test[test.index("-d") + 1] == url.path.lstrip("/")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])


def _secret_values(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in SECRET_WORDS):
                yield f"{name}.{key}", str(value)
        url = (service.get("environment") or {}).get("SPINE_CDS_DATABASE_URL")
        if url:
            parts, references = split_url(url)
            yield f"{name}.SPINE_CDS_DATABASE_URL password", references.get(parts.password or "", parts.password or "")


def test_no_literal_secrets_and_compose_refuses_to_start_without_them(services: dict[str, dict[str, Any]]) -> None:
    found = dict(_secret_values(services))
    assert {"web.SPINE_CDS_PSEUDONYM_KEY", "web.SPINE_CDS_AUDIT_KEY", "web.SPINE_CDS_SECRET_KEY"} <= set(found)
    assert "postgres.POSTGRES_PASSWORD" in found
    for where, value in found.items():
        assert REQUIRED.fullmatch(value), f"{where} must be a required variable (${{VAR:?message}}), not {value!r}"
    for where, value in found.items():
        with pytest.raises(MissingVariable):
            interpolate(value, {})
        assert interpolate(value, {m.split(":")[0][2:]: "x" for m in REQUIRED.findall(value)}) == "x", where
    for key in ("SPINE_CDS_PUBLIC_BASE_URL", "SPINE_CDS_TRUSTED_ISSUERS"):
        assert REQUIRED.fullmatch(services["web"]["environment"][key]), key


def test_the_dockerfile_installs_the_package_as_an_unprivileged_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"pip install \.(\s|$)", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".env", ".git", "instance/"} <= set(ignored)


# ---------------------------------------------------------------------------------------------------
# Running the commands


def _executable(name: str) -> str:
    """The package's console scripts beside the interpreter running the tests, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-size:] if path.exists() else "(no output)"


@contextmanager
def running(argv: list[str], env: Mapping[str, str], cwd: Path, log: Path, pass_fds: tuple[int, ...] = ()) -> Iterator[Any]:
    """A service process in its own session; always stopped (SIGTERM, then SIGKILL to its group)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """As `docker stop` does: SIGTERM, wait, then kill whatever is left of the process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children left in its group (pool processes)
    return process.returncode


def wait_for_output(process: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float = START_TIMEOUT) -> str:
    """Poll the process's output until `pattern` appears; fail early if it exits."""
    deadline = time.monotonic() + timeout
    expression = re.compile(pattern)
    while True:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if expression.search(text):
            return text
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before /{pattern}/:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no /{pattern}/ within {timeout}s:\n{_tail(log)}")
        time.sleep(0.05)


def run_check(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # in the image the console scripts are on PATH; here they sit beside the interpreter running the tests
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return subprocess.run(argv, env={**env, "PATH": path}, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def healthcheck_argv(test: list[str], adapt: Callable[[str], str] = lambda s: s) -> list[str]:
    """A compose `healthcheck.test` as the engine runs it (CMD-SHELL through /bin/sh -c)."""
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", adapt(rest[0])]
    assert kind == "CMD"
    argv = [adapt(part) for part in rest]
    return [_executable(argv[0]) if argv[0] in ("python", "celery", "spine-cds") else argv[0], *argv[1:]]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"Redis not reachable on 127.0.0.1:6379: {exc}")
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database standing in for the compose `spine` database; yields its name."""
    with scratch_postgres("spine_cds_compose") as url:
        yield url.rsplit("/", 1)[1]


class Host:
    """The compose project on this machine: interpolated with test values, names and volumes mapped."""

    def __init__(self, raw: dict[str, Any], root: Path, database: str | None, redis_url: str | None) -> None:
        self.variables = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),  # trust authentication ignores it
            "SPINE_CDS_PUBLIC_BASE_URL": "https://cds.example.org",
            "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({"https://ehr.example.org": {"jwks": {"keys": []}}}),
            "SPINE_CDS_PSEUDONYM_KEY": secrets.token_hex(32),
            "SPINE_CDS_AUDIT_KEY": secrets.token_hex(32),
            "SPINE_CDS_SECRET_KEY": secrets.token_hex(32),
            "WEB_WORKERS": "2",
        }
        self.compose = interpolate(raw, self.variables)
        self.root = root
        self.database = database
        self.redis_url = redis_url
        self.hostname = socket.gethostname()

    def path(self, container_path: str) -> Path:
        """Container paths under /data (the volumes' mount points) live under tmp_path/data."""
        assert container_path.startswith("/data/"), container_path
        return self.root / "data" / container_path.removeprefix("/data/")

    def service(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.compose["services"][name]
        for volume in found.get("volumes", []):  # the engine creates the mount points
            target = volume.split(":")[1]
            if target.startswith("/data/"):
                self.path(target).mkdir(parents=True, exist_ok=True)
        return found

    def map_value(self, key: str, value: str) -> str:
        if key == "SPINE_CDS_DATABASE_URL":
            assert self.database, "no database for this service"
            url = urlsplit(value)
            assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/spine"), value
            return urlunsplit((url.scheme, f"postgres:{url.password}@127.0.0.1:5432", f"/{self.database}", "", ""))
        if key == "SPINE_CDS_REDIS_URL":
            assert value == "redis://redis:6379/0", value
            assert self.redis_url, "no Redis for this service"
            return self.redis_url
        return str(self.path(value)) if value.startswith("/data/") else value

    def env(self, name: str) -> dict[str, str]:
        """The container's environment: ours without any SPINE_CDS_* of the developer, plus the service's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_CDS_")}
        env.update(PYTHONUNBUFFERED="1", HOSTNAME=self.hostname)
        for key, value in (self.service(name).get("environment") or {}).items():
            env[key] = self.map_value(key, str(value))
        return env

    def command(self, name: str) -> list[str]:
        argv = [str(self.path(a)) if a.startswith("/data/") else a for a in self.service(name)["command"]]
        return [_executable(argv[0]) if argv[0] in ("spine-cds", "celery") else argv[0], *argv[1:]]


@pytest.fixture
def host_factory(raw: dict[str, Any], tmp_path: Path) -> Callable[..., Host]:
    def make(database: str | None = None, redis_url: str | None = None) -> Host:
        return Host(raw, tmp_path, database, redis_url)

    return make


def test_web_serves_ready_and_its_health_check_passes(
    host_factory: Callable[..., Host], database: str, redis_url: str, tmp_path: Path
) -> None:
    import psycopg

    host = host_factory(database, redis_url)
    argv, env = host.command("web"), host.env("web")
    # `--host 0.0.0.0 --port 8080` becomes a socket this test already listens on
    at = argv.index("--host")
    assert argv[at : at + 4] == ["--host", "0.0.0.0", "--port", "8080"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    argv[at : at + 4] = ["--bind", f"fd://{listener.fileno()}"]
    log = tmp_path / "web.log"
    test = host.service("web")["healthcheck"]["test"]
    assert any("http://127.0.0.1:8080/readyz" in part for part in test)
    check = healthcheck_argv(test, lambda s: s.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    try:
        with running(argv, env, tmp_path, log, pass_fds=(listener.fileno(),)) as web:
            wait_for_output(web, log, r"Booting worker with pid")
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=20)
            assert response.status_code == 200, response.text
            assert response.json()["checks"] == {"database": "ok", "redis": "ok"}
            healthy = run_check(check, env, tmp_path)
            assert healthy.returncode == 0, healthy.stderr
            assert stop(web) == 0, _tail(log)
    finally:
        listener.close()
    # `spine-cds serve` migrated the compose database before starting gunicorn
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone()
    # and the health check fails once nothing answers
    assert run_check(check, env, tmp_path).returncode != 0


def test_worker_consumes_tasks_and_answers_its_health_check(
    host_factory: Callable[..., Host], database: str, redis_url: str, tmp_path: Path
) -> None:
    from celery import Celery
    from sqlalchemy import update

    from cds_service.database import make_engine, upgrade
    from cds_service.population.tables import PopulationJob
    from hooks.model import load_model
    from worker import population

    host = host_factory(database, redis_url)
    argv, env = host.command("worker"), host.env("worker")
    # a population job that stopped before writing its worklist: cleanup_stale must resume it
    engine = make_engine(env["SPINE_CDS_DATABASE_URL"])
    try:
        upgrade(engine)  # as `spine-cds serve` does before the workers start (depends_on web)
        job_id = population.create_job(engine, load_model(), "/data/instance/none", date.today())
        long_ago = datetime.now(UTC) - timedelta(hours=7)
        with engine.begin() as connection:
            connection.execute(
                update(PopulationJob)
                .where(PopulationJob.id == job_id)
                .values(status="finishing", created_at=long_ago, updated_at=long_ago)
            )
        log = tmp_path / "worker.log"
        client = Celery("compose-test", broker=redis_url, backend=redis_url, set_as_current=False)
        client.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
        try:
            with running(argv, env, tmp_path, log) as worker:
                resumed = client.send_task("population.cleanup_stale").get(timeout=START_TIMEOUT)
                assert resumed == 1, _tail(log)
                deadline = time.monotonic() + START_TIMEOUT
                while (state := population.job(engine, job_id) or {}).get("status") == "finishing":
                    assert time.monotonic() < deadline and worker.poll() is None, _tail(log)
                    time.sleep(0.05)
                assert state["status"] == "done", state
                # the worker wrote the worklist into the instance folder it shares with web
                instance = Path(env["SPINE_CDS_INSTANCE_PATH"])
                assert instance == host.path("/data/instance")
                worklist = population.job_dir(instance, job_id) / "worklist.csv"
                assert worklist.read_text(encoding="utf-8").startswith("patient_id,")

                test = host.service("worker")["healthcheck"]["test"]
                healthy = run_check(healthcheck_argv(test), env, tmp_path)
                assert healthy.returncode == 0, healthy.stdout + healthy.stderr
                assert f"celery@{host.hostname}: OK" in healthy.stdout
                assert stop(worker) == 0, _tail(log)  # a warm shutdown
        finally:
            client.close()
    finally:
        engine.dispose()


def test_beat_starts_persists_its_schedule_and_answers_its_health_check(
    host_factory: Callable[..., Host], database: str, redis_url: str, tmp_path: Path
) -> None:
    host = host_factory(database, redis_url)  # beat never uses the database, but has the same settings
    argv, env = host.command("beat"), host.env("beat")
    schedule = Path(argv[argv.index("--schedule") + 1])
    assert schedule.parent == host.path("/data/beat")
    log = tmp_path / "beat.log"
    test = host.service("beat")["healthcheck"]["test"]
    with running(argv, env, tmp_path, log) as beat:
        wait_for_output(beat, log, r"beat: Starting\.\.\.")
        retries = host.service("beat")["healthcheck"]["retries"]
        for _ in range(retries):  # as the engine would, before calling it unhealthy
            healthy = run_check(healthcheck_argv(test), env, tmp_path)
            if healthy.returncode == 0:
                break
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr + _tail(log)
        assert f"celerybeat@{host.hostname}: OK" in healthy.stdout
        assert stop(beat) == 0, _tail(log)
    # the schedule file is on the beat volume and holds the periodic tasks
    assert list(schedule.parent.glob(schedule.name + "*"))
    with shelve.open(str(schedule), flag="r") as stored:
        entries = stored["entries"]
    assert entries and all(isinstance(entry.task, str) and entry.task for entry in entries.values())


def test_redis_runs_with_the_compose_arguments_and_answers_its_health_check(
    host_factory: Callable[..., Host], tmp_path: Path
) -> None:
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        unavailable("redis-server and redis-cli are not installed")
    host = host_factory()
    command = host.service("redis")["command"]
    port = _free_port()
    argv = [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--daemonize", "no"]
    env = dict(os.environ)
    log = tmp_path / "redis.log"

    def cli(*args: str) -> list[str]:
        done = run_check(["redis-cli", "-p", str(port), *args], env, tmp_path, timeout=10)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    test = host.service("redis")["healthcheck"]["test"]
    check = healthcheck_argv(test, lambda s: s.replace("redis-cli ", f"redis-cli -p {port} "))
    with running(argv, env, tmp_path, log) as redis:
        wait_for_output(redis, log, r"Ready to accept connections")
        assert cli("ping") == ["PONG"]
        assert cli("CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
        assert cli("CONFIG", "GET", "maxmemory-policy") == ["maxmemory-policy", "noeviction"]
        assert run_check(check, env, tmp_path).returncode == 0
        assert stop(redis) == 0, _tail(log)
    assert (tmp_path / "appendonlydir").is_dir()
    assert run_check(check, env, tmp_path).returncode != 0  # and it fails once Redis is gone


def test_postgres_health_check_passes_against_the_database(host_factory: Callable[..., Host], database: str) -> None:
    if not shutil.which("pg_isready"):
        unavailable("pg_isready is not installed")
    host = host_factory(database)
    test = list(host.service("postgres")["healthcheck"]["test"])
    # the compose user and database become the local superuser and this test's database
    assert test[test.index("-h") + 1] == "127.0.0.1" and test[test.index("-p") + 1] == "5432"
    test[test.index("-U") + 1] = "postgres"
    test[test.index("-d") + 1] = database
    done = run_check(healthcheck_argv(test), dict(os.environ), host.root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accepting connections" in done.stdout
