"""Redis and PostgreSQL servers of a test's own, on free ports, to kill and restart in fault tests.

Never the machine's: every server here is started from its binary into a temporary directory, and
stopped (or killed) by the test that started it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ScratchRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            for _ in range(500):  # readiness: ping until it answers (each failed ping waits on its socket)
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError("redis-server exited") from None
                    _wait_a_little()
            raise RuntimeError("redis-server did not answer")
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


class ScratchPostgres:
    """A PostgreSQL cluster in a temporary directory, run as the `postgres` user when the tests run as root
    (a directory of its own under the system temp dir: pytest's are not open to other users)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="spine-cds-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise FileNotFoundError("PostgreSQL server binaries are not installed")
        self.bin = Path(found[-1]).parent
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.directory, self.user, self.user)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
        )

    def start(self) -> None:
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory)]
        command += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
        )
        for _ in range(500):
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None:
                    raise RuntimeError("postgres exited") from None
                _wait_a_little()
        raise RuntimeError("postgres did not answer")

    def _cluster_pids(self) -> list[int]:
        """The postmaster and its children (each backend is a session of its own, so no process group holds them all)."""
        if self.process is None or self.process.poll() is not None:
            return []
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # a process that exited while the list was read
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def _signal_cluster(self, signum: int) -> list[int]:
        cluster = self._cluster_pids()
        for pid in cluster:
            with contextlib.suppress(ProcessLookupError):  # a backend that exited meanwhile
                os.kill(pid, signum)
        return cluster

    def pause(self) -> None:
        """SIGSTOP the whole cluster: connections stay open and the kernel still takes their bytes, but
        nothing answers, as with a wedged host or a storage stall."""
        self._signal_cluster(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_cluster(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as a crash would (stopped ones too)."""
        if self._signal_cluster(signal.SIGKILL):
            assert self.process is not None
            self.process.wait(timeout=10)
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _wait_a_little() -> None:
    """A pause between readiness probes of a server the harness started (not a test's synchronisation)."""
    time.sleep(0.02)
