"""Assessment time per patient beside the JSON parse floor.

Run from the project root:

    python3 bench/bench_assessment.py            # the default run, about 30 s on 2 cores
    python3 bench/bench_assessment.py --quick    # a smoke run, a few seconds

For each record size (about 100 and about 1,000 resources) and each layout, the script builds
distinct synthetic patients (hooks.synthetic: the radiculopathy profile among unrelated resources),
serialises each record to JSON bytes once, and then times, per patient:

- floor: ``orjson.loads(bytes)`` alone, the least any reader of that JSON must pay;
- full:  ``orjson.loads(bytes)`` -> ``read_record`` -> ``Assessor(model).assess`` -> ``build_cards``.

Layouts:

- ``bundle``:   the whole record as one FHIR searchset Bundle (as a Bulk Data or $everything reader sees it);
- ``prefetch``: the CDS Hooks prefetch object, one searchset Bundle per template (hooks.synthetic.prefetch_for).
  Prefetch carries only Patient, Condition, Observation, Procedure and ServiceRequest, so its unrelated
  resources are all vital-sign Observations, each of which the reader has to look at.

Timing uses time.perf_counter_ns, a warm-up pass, several rounds over every patient, and alternates
which of floor and full goes first for a patient. The result is a table of median and p95 microseconds
per patient and the full/floor ratio. Nothing here asserts a time; the script checks only that every
patient got the expected assessment (likely, one card), so the timed path cannot silently do less work.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python3 bench/bench_assessment.py` without installing
    sys.path.insert(0, str(ROOT))

from hooks.assessment import Assessor  # noqa: E402
from hooks.cards import CardOptions, build_cards  # noqa: E402
from hooks.fhir import RELEVANT_TYPES, read_record  # noqa: E402
from hooks.model import Model, load_model  # noqa: E402
from hooks.synthetic import Factory, prefetch_for, radiculopathy_knee_pain, searchset  # noqa: E402

TODAY = date(2026, 11, 24)
OPTIONS = CardOptions("https://cds.example.org/model")
LAYOUTS = ("bundle", "prefetch")
STAGES = ("parse", "read", "assess", "cards")


def build_resources(seed: int, size: int, layout: str) -> list[dict[str, Any]]:
    """The radiculopathy profile (5 resources) with unrelated resources around it, `size` in all."""
    factory = Factory(seed, TODAY)
    core = radiculopathy_knee_pain(factory)
    wanted = max(size - len(core), 0)
    if layout == "prefetch":
        # Factory.noise cycles encounter, immunisation, vital sign; keep the prefetchable ones
        noise = [r for r in factory.noise(3 * wanted) if r["resourceType"] in RELEVANT_TYPES][:wanted]
    else:
        noise = factory.noise(wanted)
    half = len(noise) // 2
    return [core[0], *noise[:half], *core[1:], *noise[half:]]


def serialise(resources: list[dict[str, Any]], layout: str) -> bytes:
    if layout == "prefetch":
        return orjson.dumps(prefetch_for(resources))
    return orjson.dumps(searchset(resources))


def prefetch_of(document: Any, layout: str) -> dict[str, Any]:
    """What read_record receives: the prefetch object itself, or the Bundle under one key."""
    if layout == "prefetch":
        prefetch: dict[str, Any] = document
        return prefetch
    return {"record": document}


@dataclass
class Samples:
    floor: list[int] = field(default_factory=list)
    full: list[int] = field(default_factory=list)
    stages: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in STAGES})


def time_floor(data: bytes) -> int:
    t0 = time.perf_counter_ns()
    document = orjson.loads(data)
    t1 = time.perf_counter_ns()
    del document
    return t1 - t0


def time_full(model: Model, data: bytes, layout: str, instance: str) -> tuple[list[int], int, int]:
    """Stage boundaries in ns, plus the card count and validated-resource count for the sanity check."""
    t0 = time.perf_counter_ns()
    document = orjson.loads(data)
    t1 = time.perf_counter_ns()
    record = read_record(model, prefetch=prefetch_of(document, layout))
    t2 = time.perf_counter_ns()
    assessment = Assessor(model).assess(record, TODAY)
    t3 = time.perf_counter_ns()
    cards = build_cards(model, assessment, OPTIONS, hook="patient-view", patient_id=record.patient_id, instance=instance)
    t4 = time.perf_counter_ns()
    if assessment.band != "likely":
        raise SystemExit(
            f"unexpected assessment {assessment.band!r} for {record.patient_id}: the benchmark is not measuring the intended path"
        )
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3], len(cards), record.validated_count


def measure(model: Model, records: Sequence[bytes], layout: str, rounds: int, warmup: int) -> Samples:
    for i, data in enumerate(records[:warmup]):
        time_floor(data)
        time_full(model, data, layout, f"warmup-{i}")
    samples = Samples()
    for r in range(rounds):
        if gc.isenabled():
            gc.collect()
        for i, data in enumerate(records):
            instance = f"bench-{r}-{i}"
            if (r + i) % 2:
                samples.floor.append(time_floor(data))
                stages, cards, validated = time_full(model, data, layout, instance)
            else:
                stages, cards, validated = time_full(model, data, layout, instance)
                samples.floor.append(time_floor(data))
            if cards != 1 or validated != 5:
                raise SystemExit(f"unexpected result: {cards} cards, {validated} resources validated")
            samples.full.append(sum(stages))
            for name, ns in zip(STAGES, stages, strict=True):
                samples.stages[name].append(ns)
    return samples


def p95(values: Sequence[int]) -> float:
    ordered = sorted(values)
    return float(ordered[max(0, -(-95 * len(ordered) // 100) - 1)])  # nearest rank


def us(ns: float) -> float:
    return ns / 1000.0


def summarise(samples: Samples) -> dict[str, Any]:
    floor_med, full_med = statistics.median(samples.floor), statistics.median(samples.full)
    floor_p95, full_p95 = p95(samples.floor), p95(samples.full)
    return {
        "samples": len(samples.full),
        "floor_median_us": round(us(floor_med), 1),
        "floor_p95_us": round(us(floor_p95), 1),
        "full_median_us": round(us(full_med), 1),
        "full_p95_us": round(us(full_p95), 1),
        "ratio_median": round(full_med / floor_med, 2),
        "ratio_p95": round(full_p95 / floor_p95, 2),
        "stage_median_us": {name: round(us(statistics.median(v)), 1) for name, v in samples.stages.items()},
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| size | layout | resources | JSON KiB | floor median µs | floor p95 µs | full median µs | full p95 µs "
        "| ratio (median) | ratio (p95) |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| ~{row['size']} | {row['layout']} | {row['resources']} | {row['json_kib']:.0f} "
            f"| {row['floor_median_us']:.1f} | {row['floor_p95_us']:.1f} | {row['full_median_us']:.1f} | {row['full_p95_us']:.1f} "
            f"| {row['ratio_median']:.2f}x | {row['ratio_p95']:.2f}x |"
        )
    return "\n".join(lines)


def stage_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| size | layout | parse µs | read_record µs | assess µs | build_cards µs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["stage_median_us"]
        lines.append(
            f"| ~{row['size']} | {row['layout']} | {s['parse']:.1f} | {s['read']:.1f} | {s['assess']:.1f} | {s['cards']:.1f} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "orjson": version("orjson"),
        "fhir.resources": version("fhir.resources"),
        "pydantic": version("pydantic"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=200, help="distinct patients per size and layout (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over every patient (default 5)")
    parser.add_argument("--warmup", type=int, default=50, help="patients run once, untimed, before timing (default 50)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="resources per record (default 100 1000)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument(
        "--gc",
        choices=("on", "freeze", "off"),
        default="on",
        help="garbage collector while timing: on (default, as a plain process runs), freeze (gc.freeze() after "
        "start-up, as a pre-forking server can do) or off",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 patients, 2 rounds")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "assessment.json", help="where to write results"
    )
    parser.add_argument("--no-json", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.patients, args.rounds, args.warmup = 40, 2, 10

    started = time.perf_counter()
    model = load_model()
    # one untimed patient first, so the lazily imported fhir.resources classes exist before any freeze
    time_full(model, serialise(build_resources(0, 10, "bundle"), "bundle"), "bundle", "prime")
    if args.gc == "freeze":
        # move everything alive after start-up (modules, fhir.resources classes, the model) out of the
        # collector's reach, so full collections no longer walk it
        gc.collect()
        gc.freeze()
    elif args.gc == "off":
        gc.disable()
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for layout in args.layouts:
            resources = [build_resources(size * 100_000 + i, size, layout) for i in range(args.patients)]
            records = [serialise(r, layout) for r in resources]
            counts = {len(r) for r in resources}
            del resources
            samples = measure(model, records, layout, args.rounds, min(args.warmup, len(records)))
            row = {
                "size": size,
                "layout": layout,
                "resources": "/".join(str(c) for c in sorted(counts)),
                "json_kib": round(statistics.mean(len(b) for b in records) / 1024, 1),
                "patients": len(records),
                "rounds": args.rounds,
            }
            row.update(summarise(samples))
            rows.append(row)
            print(f"  measured ~{size} resources, {layout}: {row['samples']} samples", file=sys.stderr)

    elapsed = time.perf_counter() - started
    print(table(rows))
    print()
    print("Median per stage (the full path is their sum):")
    print(stage_table(rows))
    print()
    env = environment()
    print(
        f"{args.patients} patients x {args.rounds} rounds per row; Python {env['python']}, orjson {env['orjson']}, "
        f"fhir.resources {env['fhir.resources']}, {env['cpus']} CPUs; gc {args.gc}; {elapsed:.1f} s in all."
    )
    worst = max(row["ratio_median"] for row in rows)
    print(f"Target: full path within 10x the parse floor (median). Worst median ratio: {worst:.2f}x.")
    if not args.no_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(
            orjson.dumps(
                {"environment": env, "gc": args.gc, "elapsed_s": round(elapsed, 1), "rows": rows},
                option=orjson.OPT_INDENT_2,
            )
        )
        print(f"Results written to {args.json}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
