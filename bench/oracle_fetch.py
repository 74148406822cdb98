"""The fetch path as Oracle Health uses it: no prefetch at all, every key fetched by the service.

    python3 bench/oracle_fetch.py                          # 200 calls per mode, FHIR server answers after 50 ms
    python3 bench/oracle_fetch.py --calls 500 --delay-ms 100

The service runs under gunicorn (2 workers x 8 threads, as `spine-cds serve`; SQLite, embedded defaults
otherwise), trusting the bench issuer with `allow_http` and the issuer's `fhir_servers` set to a local
FHIR R4 server (threaded `http.server`, `tests.support.FhirServer`) that holds one synthetic patient
(`radiculopathy-knee-pain`), checks the access token and sleeps `--delay-ms` before each answer.

One client, sequentially, each call with a fresh ES384 token, alternating two modes for the same patient
(then `--concurrency` callers at once, 8 by default, each sending `--calls` no-prefetch calls):
- **no prefetch** (Oracle): `fhirServer` + `fhirAuthorization` and no `prefetch`, so the service fetches
  every key of its discovery prefetch (`GET /cds-services`) itself, in parallel threads;
- **full prefetch**: the same call with every discovery key prefetched (`hooks.synthetic.prefetch_for`),
  so nothing is fetched.

Reported per mode: statuses, card counts, latency p50 / p99 (nearest rank) / mean / max in ms; for the
no-prefetch calls the FHIR reads per call (counted at the server) and the most reads in flight at once
during a call (the parallelism the server saw). Asserts nothing about time; prints the figures (and
JSON on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_hooks import ISSUER, Signer, gunicorn  # noqa: E402
from bench.fuzz_and_faults import PATIENT_VIEW, Caller  # noqa: E402
from hooks.synthetic import generate, prefetch_for  # noqa: E402
from tests.support import FhirServer  # noqa: E402

FHIR_TOKEN = "bench-oracle-access-token"
SERVICE_ID = PATIENT_VIEW.rsplit("/", 1)[-1]
MODES = ("no_prefetch", "full_prefetch")


class SlowFhirServer(FhirServer):
    """`FhirServer` answering each request after `delay` seconds, counting requests and peak concurrency."""

    def __init__(self, resources: list[dict[str, Any]], delay: float) -> None:
        # a page cap above the service's `_count` (100): each search is one read (the record is small anyway)
        super().__init__(resources, page_size=1000, token=FHIR_TOKEN, require_observation_filter=True)
        self.delay = delay
        self._lock = threading.Lock()
        self.served = 0
        self.in_flight = 0
        self.peak = 0

    def _handle(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            self.served += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.delay)  # the EHR's FHIR latency; each request sleeps in its own thread
            return super()._handle(path, query, headers)
        finally:
            with self._lock:
                self.in_flight -= 1

    def take(self) -> tuple[int, int]:
        """Requests served and peak in flight since the last `take`."""
        with self._lock:
            served, peak = self.served, self.peak
            self.served = self.peak = 0
        return served, peak


def env_for(signer: Signer, instance: Path, fhir_base: str) -> dict[str, str]:
    return {
        "SPINE_CDS_INSTANCE_PATH": str(instance),
        "SPINE_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": signer.jwks, "fhir_servers": [fhir_base]}}),
        "SPINE_CDS_PSEUDONYM_KEY": "bench-pseudonym-key",
        "SPINE_CDS_ALLOW_HTTP": "true",
        "SPINE_CDS_LOG_LEVEL": "WARNING",
    }


def discovery_templates(base: str, signer: Signer) -> dict[str, str]:
    caller = Caller(base, signer)
    (token,) = signer.tokens(base + "/cds-services", 1)
    response = caller.client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    (service,) = [s for s in response.json()["services"] if s["id"] == SERVICE_ID]
    return dict(service.get("prefetch") or {})


def full_prefetch(resources: list[dict[str, Any]], templates: dict[str, str]) -> dict[str, Any]:
    """`prefetch_for`, which must cover every discovery key, or the full mode would fetch too."""
    prefetch = prefetch_for(resources)
    missing = templates.keys() - prefetch.keys()
    assert not missing, f"prefetch_for lacks discovery keys {sorted(missing)}"
    return {k: v for k, v in prefetch.items() if k in templates}


def body_for(mode: str, patient_id: str, fhir_base: str, prefetch: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": patient_id},
        # both modes carry the server and token, so the only difference is the prefetch
        "fhirServer": fhir_base,
        "fhirAuthorization": {
            "access_token": FHIR_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "spine-cds",
        },
    }
    if mode == "full_prefetch":
        body["prefetch"] = prefetch
    return body


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def concurrent_calls(base: str, signer: Signer, patient_id: str, fhir_base: str, clients: int, calls: int) -> dict[str, Any]:
    """`clients` callers at once, each sending `calls` no-prefetch calls back to back: the fetch pool and the
    request threads under load (2 workers x 8 threads, so up to 16 calls and 96 reads in flight)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client() -> None:
        caller = Caller(base, signer)
        for _ in range(calls):
            status, elapsed, _payload = caller.post(PATIENT_VIEW, body_for("no_prefetch", patient_id, fhir_base, {}))
            with lock:
                latencies.append(elapsed)
                statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"clients": clients, **summary(latencies), "statuses": dict(statuses)}


def run(calls: int, delay_ms: float, warmup: int, concurrency: int = 8) -> dict[str, Any]:
    signer = Signer()
    resources = generate("radiculopathy-knee-pain", seed=1)
    patient_id = resources[0]["id"]
    server = SlowFhirServer(resources, delay_ms / 1000)
    with (
        tempfile.TemporaryDirectory() as directory,
        server.peer.running(),
        gunicorn("cds_service.wsgi:app", env_for(signer, Path(directory), server.base), 2, 8) as base,
    ):
        templates = discovery_templates(base, signer)
        prefetch = full_prefetch(resources, templates)
        caller = Caller(base, signer)
        latencies: dict[str, list[float]] = {m: [] for m in MODES}
        statuses: dict[str, Counter[int]] = {m: Counter() for m in MODES}
        cards: dict[str, Counter[int]] = {m: Counter() for m in MODES}
        reads: dict[str, Counter[int]] = {m: Counter() for m in MODES}
        peaks: Counter[int] = Counter()
        summaries: dict[str, set[tuple[str, ...]]] = {m: set() for m in MODES}
        fetched_paths: Counter[str] = Counter()
        for n in range(warmup + calls):
            for mode in MODES:  # alternated, so drift in the machine's load hits both modes alike
                body = body_for(mode, patient_id, server.base, prefetch)
                server.take()
                mark = len(server.peer.requests)
                status, elapsed, payload = caller.post(PATIENT_VIEW, body)
                served, peak = server.take()
                if n < warmup:
                    continue
                latencies[mode].append(elapsed)
                statuses[mode][status] += 1
                cards[mode][len(payload["cards"]) if status == 200 and isinstance(payload, dict) else -1] += 1
                reads[mode][served] += 1
                if status == 200 and isinstance(payload, dict):
                    summaries[mode].add(tuple(sorted(c["summary"] for c in payload["cards"])))
                if mode == "no_prefetch":
                    peaks[peak] += 1
                    fetched_paths.update(r.path for r in server.peer.requests[mark:])
        concurrent = concurrent_calls(base, signer, patient_id, server.base, concurrency, calls) if concurrency > 1 else None
    return {
        "concurrent_no_prefetch": concurrent,
        "calls_per_mode": calls,
        "fhir_delay_ms": delay_ms,
        "gunicorn": "2 workers x 8 threads",
        "discovery_prefetch_keys": sorted(templates),
        "modes": {
            mode: {
                **summary(latencies[mode]),
                "statuses": dict(statuses[mode]),
                "cards": dict(cards[mode]),
                "fhir_reads_per_call": dict(reads[mode]),
            }
            for mode in MODES
        },
        # the cards' summaries, beside their count: fetched and prefetched data must read the same
        "same_card_summaries": summaries["no_prefetch"] == summaries["full_prefetch"] and len(summaries["no_prefetch"]) == 1,
        "no_prefetch_peak_reads_in_flight": dict(peaks),
        "no_prefetch_paths_read": dict(fetched_paths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="measured calls per mode")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="the FHIR server's wait before each answer")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per mode first")
    parser.add_argument("--concurrency", type=int, default=8, help="callers at once for the concurrent no-prefetch run (1: none)")
    args = parser.parse_args()
    results = run(args.calls, args.delay_ms, args.warmup, args.concurrency)
    print(
        f"{results['calls_per_mode']} calls per mode, FHIR answers after {results['fhir_delay_ms']:g} ms, "
        f"{results['gunicorn']}, discovery keys {len(results['discovery_prefetch_keys'])}"
    )
    for mode, row in results["modes"].items():
        print(
            f"{mode:14} p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, mean {row['mean_ms']} ms, max {row['max_ms']} ms; "
            f"statuses {row['statuses']}, cards {row['cards']}, FHIR reads per call {row['fhir_reads_per_call']}"
        )
    print(
        f"no prefetch: peak FHIR reads in flight per call {results['no_prefetch_peak_reads_in_flight']}; "
        f"same card summaries in both modes: {results['same_card_summaries']}"
    )
    if results["concurrent_no_prefetch"]:
        row = results["concurrent_no_prefetch"]
        print(
            f"no prefetch, {row['clients']} callers at once: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
            f"mean {row['mean_ms']} ms, max {row['max_ms']} ms; statuses {row['statuses']}"
        )
    same = {json.dumps(row["cards"]) for row in results["modes"].values()}
    if (
        len(same) != 1
        or not results["same_card_summaries"]
        or any(set(row["statuses"]) != {200} for row in results["modes"].values())
    ):
        print("WARNING: the modes differ in statuses or card counts", file=sys.stderr)
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
