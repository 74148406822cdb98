"""Holding the model to its intent: synthetic profiles, and real public records when present."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from hooks.assessment import Assessment, Assessor
from hooks.cards import CardOptions, build_cards
from hooks.fhir import RecordReader, patient_of_resource, read_record
from hooks.model import Model
from hooks.synthetic import PROFILES, Profile, generate


def outcome(assessment: Assessment) -> str:
    """What a clinician would see: a band, or why no card could appear."""
    if not assessment.eligible:
        return "ineligible"
    if assessment.red_flagged:
        return "red-flag"
    if assessment.suppressed:
        return "suppressed"
    return assessment.band or "unlikely"


def card_of(model: Model, assessment: Assessment) -> str:
    """The patient-view card a clinician would see, in a few words."""
    cards = build_cards(model, assessment, CardOptions(docs_url="about:blank"), hook="patient-view", patient_id="p")
    if not cards:
        return "none"
    card = cards[0]
    if not assessment.actionable:
        return f"{card['indicator']}: red flag, no referral"
    offer = "referral offered" if card.get("suggestions") else "examine first, no referral"
    return f"{card['indicator']}: {offer}"


@dataclass(frozen=True)
class ProfileResult:
    profile: Profile
    outcome: str
    card: str
    assessment: Assessment

    @property
    def expected(self) -> str:
        return self.profile.expected

    @property
    def ok(self) -> bool:
        return self.expected == self.outcome


def evaluate_profiles(model: Model, today: date, seed: int = 0) -> list[ProfileResult]:
    assessor = Assessor(model)
    results = []
    for profile in PROFILES:
        resources = generate(profile, seed=seed, today=today)
        assessment = assessor.assess(read_record(model, resources), today)
        results.append(ProfileResult(profile, outcome(assessment), card_of(model, assessment), assessment))
    return results


def _bundle_resources(path: Path) -> list[Mapping[str, Any]]:
    bundle = orjson.loads(path.read_bytes())
    entries = bundle.get("entry", []) if isinstance(bundle, Mapping) else []
    return [e["resource"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)]


def iter_data_records(model: Model, data_dir: Path) -> Iterator[tuple[str, RecordReader]]:
    """One reader per patient found under data_dir: FHIR Bundles (*.json) and Bulk Data NDJSON directories."""
    for path in sorted(data_dir.rglob("*.json")):
        try:
            resources = _bundle_resources(path)
        except orjson.JSONDecodeError:
            continue
        if not any(r.get("resourceType") == "Patient" for r in resources):
            continue
        reader = RecordReader(model)
        for resource in resources:
            reader.add(resource)
        yield path.name, reader
    ndjson_dirs = sorted({p.parent for p in data_dir.rglob("Patient*.ndjson")})
    for directory in ndjson_dirs:
        readers: dict[str, RecordReader] = {}
        for path in sorted(directory.glob("*.ndjson")):
            with path.open("rb") as lines:
                for line in lines:
                    if not line.strip():
                        continue
                    resource = orjson.loads(line)
                    if not isinstance(resource, dict) or "resourceType" not in resource:
                        continue
                    patient_id = patient_of_resource(resource)
                    if patient_id is None:
                        continue
                    if patient_id not in readers:
                        readers[patient_id] = RecordReader(model, patient_id)
                    readers[patient_id].add(resource)
        for patient_id, reader in sorted(readers.items()):
            yield f"{directory.name}/{patient_id[:8]}", reader


@dataclass(frozen=True)
class DataRun:
    rows: list[tuple[str, Assessment]]

    def distribution(self) -> Counter[str]:
        return Counter(outcome(a) for _, a in self.rows)


def evaluate_data(model: Model, data_dir: Path, today: date) -> DataRun:
    assessor = Assessor(model)
    return DataRun([(label, assessor.assess(reader.record, today)) for label, reader in iter_data_records(model, data_dir)])
