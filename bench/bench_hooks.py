"""Hook latency and throughput under gunicorn, beside a floor run in the same server.

The service runs as `spine-cds serve` would run it (gunicorn, gthread workers) with JWT verification
and the decision log on. The floor is a bare Flask endpoint under the same gunicorn settings that
parses the same body and returns a static card. Each request carries a freshly signed ES384 JWT (`--alg RS384` for RSA)
(unique jti) and a patient-view body with a ~100-resource prefetch.

    python3 bench/bench_hooks.py                      # SQLite decision log
    python3 bench/bench_hooks.py --database postgresql://postgres@127.0.0.1:5432/test

Two measurements per target: latency at a fixed arrival rate (open loop, default 100 requests/s),
and throughput with a fixed number of concurrent clients (closed loop).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hooks.synthetic import Factory, prefetch_for, radiculopathy_knee_pain  # noqa: E402

ISSUER = "https://bench-ehr.example"
SERVICE_PATH = "/cds-services/spine-knee-patient-view"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_body(resources: int) -> bytes:
    factory = Factory(seed=1)
    core = radiculopathy_knee_pain(factory)
    # vital-sign observations are the bulk of a real prefetch; they reach the reader and are skipped
    noise = [r for r in factory.noise(3 * resources) if r["resourceType"] == "Observation"][: resources - len(core)]
    prefetch = prefetch_for(core + noise)
    body = {
        "hook": "patient-view",
        "hookInstance": "HOOK-INSTANCE",
        "context": {"userId": "Practitioner/bench", "patientId": core[0]["id"]},
        "prefetch": prefetch,
    }
    return orjson.dumps(body)


class Signer:
    """The EHR side: a key pair, its JWKS, and one freshly signed token per request."""

    def __init__(self, alg: str = "ES384") -> None:
        self.alg = alg
        self.kid = f"bench-{alg}"
        if alg == "ES384":
            self.key: Any = ec.generate_private_key(ec.SECP384R1())
            public = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        public.update(kid=self.kid, alg=alg, use="sig")
        self.jwks = {"keys": [public]}

    def tokens(self, audience: str, count: int) -> list[str]:
        # signed up front, so the load generator only sends them; valid for the service's longest lifetime
        # (JWT_MAX_LIFETIME_SECONDS, 300 s), which covers both runs
        now = int(time.time())
        return [
            jwt.encode(
                {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())},
                self.key,
                algorithm=self.alg,
                headers={"kid": self.kid},
            )
            for _ in range(count)
        ]


@contextmanager
def gunicorn(app: str, env: dict[str, str], workers: int, threads: int) -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads), "--timeout", "30", "--log-level", "warning", app,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{app} did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) of the server, database and load-generator processes so far."""
    groups = {"server": 0.0, "database": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        command = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        if command.startswith("postgres"):
            groups["database"] += seconds
        elif command.startswith(("gunicorn", "python")) and "gunicorn" in Path(stat.parent, "cmdline").read_bytes().decode(
            errors="replace"
        ):
            groups["server"] += seconds
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    groups["load generator"] = children.ru_utime + children.ru_stime  # wrk, a child that has exited
    return groups


def _request(client: httpx.Client, body_template: bytes, token: str) -> tuple[float, int]:
    body = body_template.replace(b"HOOK-INSTANCE", str(uuid.uuid4()).encode())
    started = time.perf_counter()
    response = client.post(
        SERVICE_PATH, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    return (time.perf_counter() - started) * 1000, response.status_code


def fixed_rate(base: str, body: bytes, tokens: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: requests start on a fixed schedule whatever the latency, so queueing shows."""
    total = int(rate * seconds)
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    clients = [httpx.Client(base_url=base, timeout=10) for _ in range(16)]
    start = time.perf_counter()

    def send(i: int) -> None:
        latency, status = _request(clients[i % len(clients)], body, tokens[i])
        with lock:
            latencies.append(latency)
            statuses.append(status)

    threads = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=send, args=(i,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    ordered = sorted(latencies)
    return {
        "requests": total,
        "errors": sum(1 for s in statuses if s != 200),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 2),
    }


def closed_loop(base: str, body: bytes, tokens: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop: `concurrency` clients send back to back; throughput is what the server sustains."""
    counter = iter(range(len(tokens)))
    lock = threading.Lock()
    done: list[int] = []
    stop = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            while time.perf_counter() < stop:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                _, status = _request(client, body, tokens[i])
                with lock:
                    done.append(status)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"requests": len(done), "errors": sum(1 for s in done if s != 200), "rps": round(len(done) / elapsed, 1)}


def wrk_closed_loop(base: str, body: bytes, tokens: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop driven by wrk (C), so the load generator takes little of the CPU the server needs."""
    threads = 2
    with tempfile.TemporaryDirectory() as scratch:
        token_file, body_file = Path(scratch) / "tokens", Path(scratch) / "body.json"
        token_file.write_text("\n".join(tokens))
        body_file.write_bytes(body)
        env = {**os.environ, "BENCH_TOKENS": str(token_file), "BENCH_BODY": str(body_file), "BENCH_THREADS": str(threads)}
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{int(seconds)}s",
            "-s",
            str(ROOT / "bench" / "wrk_hooks.lua"),
            base + SERVICE_PATH,
        ]
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    rps = float(next(line.split()[1] for line in output.splitlines() if line.startswith("Requests/sec")))
    errors = sum(int(line.split()[-1]) for line in output.splitlines() if "Non-2xx" in line)
    total = int(next(line.split()[0] for line in output.splitlines() if "requests in" in line))
    return {"requests": total, "errors": errors, "rps": round(rps, 1), "client": "wrk"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=None, help="decision log URL (default: SQLite in a temporary folder)")
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alg", choices=("ES384", "RS384"), default="ES384", help="the EHR's JWT algorithm")
    parser.add_argument("--only", choices=("floor", "service"), help="run one target (no ratio is printed)")
    args = parser.parse_args()

    signer = Signer(args.alg)
    body = make_body(args.resources)
    results: dict[str, Any] = {"body_bytes": len(body), "resources": args.resources}
    with tempfile.TemporaryDirectory() as instance:
        database = args.database or f"sqlite:///{instance}/bench.sqlite3"
        env = {
            "SPINE_CDS_INSTANCE_PATH": instance,
            "SPINE_CDS_DATABASE_URL": database,
            "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": signer.jwks}}),
            "SPINE_CDS_PSEUDONYM_KEY": "bench-key",
            "SPINE_CDS_LOG_LEVEL": "WARNING",
        }
        # migrate once up front, as `spine-cds serve` does
        subprocess.run(
            [sys.executable, "-c", "from cds_service.app import create_app; create_app()"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
        )
        env["SPINE_CDS_AUTO_MIGRATE"] = "false"
        needed = int(args.rate * args.seconds) + 40_000
        targets = (("floor", "bench.floor_app:app"), ("service", "cds_service.wsgi:app"))
        for name, app in (t for t in targets if args.only in (None, t[0])):
            with gunicorn(app, env, args.workers, args.threads) as base:
                tokens = signer.tokens(base + SERVICE_PATH, needed)
                _request(httpx.Client(base_url=base), body, tokens.pop())  # warm-up
                latency = fixed_rate(base, body, tokens[: int(args.rate * args.seconds)], args.rate, args.seconds)
                rest = tokens[int(args.rate * args.seconds) :]
                before = cpu_seconds()
                if shutil.which("wrk"):
                    throughput = wrk_closed_loop(base, body, rest, args.concurrency, args.seconds)
                else:
                    throughput = closed_loop(base, body, rest, args.concurrency, args.seconds)
                after = cpu_seconds()
                # CPU per request, by process group, over the throughput run: where the two cores go
                throughput["cpu_ms_per_request"] = {
                    group: round((after[group] - before[group]) * 1000 / max(1, throughput["requests"]), 3) for group in after
                }
                results[name] = {"latency_at_rate": latency, "throughput": throughput}
        results["database"] = "sqlite" if database.startswith("sqlite") else "postgresql"
    print(json.dumps(results, indent=2))
    lines = [
        f"\n{args.resources}-resource prefetch, {results['database']} decision log, {args.workers} workers x {args.threads} threads",
        f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}",
    ]
    for name in ("floor", "service"):
        if name in results:
            rate, closed = results[name]["latency_at_rate"], results[name]["throughput"]
            lines.append(f"{name:10} {rate['p50_ms']:>8} {rate['p99_ms']:>8} {closed['rps']:>8}")
    if "floor" in results and "service" in results:
        lines.append(
            f"throughput ratio service/floor: {results['service']['throughput']['rps'] / results['floor']['throughput']['rps']:.2f}"
        )
    print("\n".join(lines))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    suffix = f"-{args.only}" if args.only else ""
    (out / f"hooks-{results['database']}{suffix}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
