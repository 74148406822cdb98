"""Slow and huge FHIR servers against the service under gunicorn (SQLite, embedded defaults otherwise).

    python3 bench/slow_upstream.py                         # threads per worker 2, 8 and 16; 8 stuck callers
    python3 bench/slow_upstream.py --threads 4 --stuck 16 --seconds 30

Starvation: 8 callers (`--stuck`) loop on calls whose `conditions` prefetch is missing and whose
`fhirServer` drips one byte every 0.2 s without end, so each of their calls is held until the fetch
deadline (`FETCH_DEADLINE_SECONDS`, 3 s) and answered 412; meanwhile one caller sends calls with full
prefetch back to back. Reported per gunicorn thread count (2 workers): the full-prefetch calls' latency
(median, p95, max) and statuses, the stuck calls' count, statuses and longest answer. Each run starts
with the same full-prefetch calls on an idle service for the baseline.

Huge answer: calls whose missing key is answered by a server that streams a 300 MB Bundle as fast as it
can. Reported: their statuses, and each gunicorn worker's peak resident memory (VmHWM) before and after.

Asserts nothing about time; prints the figures (and JSON on stderr).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_hooks import ISSUER, Signer, gunicorn  # noqa: E402
from bench.fuzz_and_faults import PATIENT_VIEW, Caller, patient_view  # noqa: E402
from tests.support import http_server  # noqa: E402

FHIR_TOKEN = "bench-fhir-access-token"
HUGE_BYTES = 300 * 1024 * 1024


@contextmanager
def upstream(kind: str) -> Iterator[str]:
    """A FHIR server that drips its answer (`drip`) or streams 300 MB of Bundle entries (`huge`)."""
    stop = threading.Event()
    entry = b'{"resource": {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"}}},' * 100

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.end_headers()
            try:
                self.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
                sent = 0
                while not stop.is_set() and (kind == "drip" or sent < HUGE_BYTES):
                    if kind == "drip":
                        stop.wait(0.2)  # the server's pace
                        self.wfile.write(b" ")
                    else:
                        self.wfile.write(entry)
                        sent += len(entry)
                    self.wfile.flush()
            except OSError:
                pass  # the service hung up

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as url:
        yield url + "/fhir"
        stop.set()


def env_for(signer: Signer, instance: Path, fhir_base: str) -> dict[str, str]:
    return {
        "SPINE_CDS_INSTANCE_PATH": str(instance),
        "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": signer.jwks, "fhir_servers": [fhir_base]}}),
        "SPINE_CDS_PSEUDONYM_KEY": "bench-pseudonym-key",
        "SPINE_CDS_ALLOW_HTTP": "true",
    }


def fetching_call(seed: int, fhir_base: str) -> dict[str, Any]:
    body = patient_view(seed)
    body["prefetch"] = {k: v for k, v in body["prefetch"].items() if k != "conditions"}
    body["fhirServer"] = fhir_base
    body["fhirAuthorization"] = {"access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "user/Condition.read", "subject": "spine-cds"}  # fmt: skip
    return body


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def starvation(threads: int, stuck: int, seconds: float) -> dict[str, Any]:
    signer = Signer()
    with (
        tempfile.TemporaryDirectory() as directory,
        upstream("drip") as drip,
        gunicorn("cds_service.wsgi:app", env_for(signer, Path(directory), drip), 2, threads) as base,
    ):
        prompt = Caller(base, signer)
        for n in range(5):  # warm-up: imports, the model, the first connections
            prompt.post(PATIENT_VIEW, patient_view(seed=n))
        idle = [prompt.post(PATIENT_VIEW, patient_view(seed=100 + n))[1] for n in range(50)]

        stop = threading.Event()
        stuck_results: list[tuple[int, float]] = []

        def loop(worker: int) -> None:
            caller = Caller(base, signer)
            n = 0
            while not stop.is_set():
                status, elapsed, _ = caller.post(PATIENT_VIEW, fetching_call(10_000 * (worker + 1) + n, drip))
                stuck_results.append((status, elapsed))
                n += 1

        loopers = [threading.Thread(target=loop, args=(w,), daemon=True) for w in range(stuck)]
        for thread in loopers:
            thread.start()
        time.sleep(3)  # let the stuck calls take their threads before measuring
        statuses: Counter[int] = Counter()
        loaded = []
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            status, elapsed, _ = prompt.post(PATIENT_VIEW, patient_view(seed=1000 + n))
            statuses[status] += 1
            loaded.append(elapsed)
            n += 1
        stop.set()
        for thread in loopers:
            thread.join(timeout=30)
    return {
        "threads_per_worker": threads,
        "stuck_callers": stuck,
        "idle": summary(idle),
        "full_prefetch_under_load": summary(loaded),
        "full_prefetch_statuses": dict(statuses),
        "stuck_calls": len(stuck_results),
        "stuck_statuses": dict(Counter(s for s, _ in stuck_results)),
        "stuck_longest_ms": round(max(e for _, e in stuck_results) * 1000, 1),
    }


def worker_peaks(base: str) -> dict[int, int]:
    """Peak resident memory (KiB) of the gunicorn processes serving `base` (they share its command line)."""
    bind = base.removeprefix("http://")
    peaks = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if bind not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(proc.name)] = int(line.split()[1])
        except OSError:
            continue
    return peaks


def huge(calls: int) -> dict[str, Any]:
    signer = Signer()
    with (
        tempfile.TemporaryDirectory() as directory,
        upstream("huge") as server,
        gunicorn("cds_service.wsgi:app", env_for(signer, Path(directory), server), 2, 2) as base,
    ):
        caller = Caller(base, signer)
        for n in range(5):
            caller.post(PATIENT_VIEW, patient_view(seed=n))
        before = worker_peaks(base)
        results = [caller.post(PATIENT_VIEW, fetching_call(20_000 + n, server)) for n in range(calls)]
        after = worker_peaks(base)
    return {
        "calls": calls,
        "answer_bytes_offered": HUGE_BYTES,
        "statuses": dict(Counter(status for status, _, _ in results)),
        "longest_ms": round(max(elapsed for _, elapsed, _ in results) * 1000, 1),
        "peak_rss_kib_before": sorted(before.values()),
        "peak_rss_kib_after": sorted(after.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--stuck", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--huge-calls", type=int, default=6)
    args = parser.parse_args()
    results = {
        "starvation": [starvation(t, args.stuck, args.seconds) for t in args.threads],
        "huge": huge(args.huge_calls),
    }
    for row in results["starvation"]:
        idle, loaded = row["idle"], row["full_prefetch_under_load"]
        print(
            f"2 workers x {row['threads_per_worker']} threads, {row['stuck_callers']} stuck callers: full prefetch idle "
            f"median {idle['median_ms']} ms / max {idle['max_ms']} ms; under load {loaded['calls']} calls median "
            f"{loaded['median_ms']} ms, p95 {loaded['p95_ms']} ms, max {loaded['max_ms']} ms, statuses "
            f"{row['full_prefetch_statuses']}; stuck calls {row['stuck_calls']} {row['stuck_statuses']}, "
            f"longest {row['stuck_longest_ms']} ms"
        )
    row = results["huge"]
    print(
        f"huge answer ({row['answer_bytes_offered'] // 2**20} MiB offered): {row['calls']} calls {row['statuses']}, "
        f"longest {row['longest_ms']} ms; worker peak RSS KiB before {row['peak_rss_kib_before']}, "
        f"after {row['peak_rss_kib_after']}"
    )
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
