"""Synthetic FHIR R4 patients by clinical profile, for evaluation, tests, the demo and benchmarks.

Every profile states the outcome the model is meant to give it, so the evaluation command and the
tests can hold the model to its intent. Resources are built by small factories; nothing here is
copied from a real record.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any, cast

from hooks.fhir import RECORD_TYPES

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

Resource = dict[str, Any]


class Factory:
    """Builds resources for one patient with reproducible ids."""

    def __init__(self, seed: int = 0, today: date | None = None, patient_id: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.today = today or date(2026, 11, 24)
        self.patient_id = patient_id or self.new_id()

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def days_ago(self, days: int) -> str:
        return (self.today - timedelta(days=days)).isoformat()

    def patient(self, age: int, gender: str = "female") -> Resource:
        born = date(self.today.year - age, 3, 1)
        if born > self.today.replace(year=self.today.year - age):
            born = born.replace(year=born.year - 1)
        return {"resourceType": "Patient", "id": self.patient_id, "gender": gender, "birthDate": born.isoformat()}

    def condition(
        self,
        system: str,
        code: str,
        display: str,
        *,
        clinical: str = "active",
        verification: str = "confirmed",
        onset_days_ago: int = 90,
        body_site: str | None = None,
    ) -> Resource:
        resource: Resource = {
            "resourceType": "Condition",
            "id": self.new_id(),
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": clinical}]},
            "verificationStatus": {"coding": [{"system": VERIFICATION, "code": verification}]},
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": self.subject,
            "onsetDateTime": self.days_ago(onset_days_ago),
            "recordedDate": self.days_ago(onset_days_ago),
        }
        if body_site:
            resource["bodySite"] = [{"text": body_site}]
        return resource

    def observation(
        self, system: str, code: str, display: str, *, value: float | None = None, days_ago: int = 30, status: str = "final"
    ) -> Resource:
        resource: Resource = {
            "resourceType": "Observation",
            "id": self.new_id(),
            "status": status,
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": self.subject,
            "effectiveDateTime": self.days_ago(days_ago),
        }
        if value is not None:
            resource["valueQuantity"] = {
                "value": value,
                "unit": "{score}",
                "system": "http://unitsofmeasure.org",
                "code": "{score}",
            }
        return resource

    def procedure(self, system: str, code: str, display: str, *, days_ago: int = 400, status: str = "completed") -> Resource:
        return {
            "resourceType": "Procedure",
            "id": self.new_id(),
            "status": status,
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": self.subject,
            "performedDateTime": self.days_ago(days_ago),
        }

    def service_request(
        self,
        system: str,
        code: str,
        display: str,
        *,
        status: str = "active",
        days_ago: int = 10,
        body_site: tuple[str, str] | None = None,
        reason_text: str | None = None,
        identifier: tuple[str, str] | None = None,
    ) -> Resource:
        resource: Resource = {
            "resourceType": "ServiceRequest",
            "id": self.new_id(),
            "status": status,
            "intent": "order",
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "subject": self.subject,
            "authoredOn": self.days_ago(days_ago),
        }
        if body_site:
            resource["bodySite"] = [{"coding": [{"system": SNOMED, "code": body_site[0], "display": body_site[1]}]}]
        if reason_text:
            resource["reasonCode"] = [{"text": reason_text}]
        if identifier:
            resource["identifier"] = [{"system": identifier[0], "value": identifier[1]}]
        return resource

    def noise(self, count: int) -> list[Resource]:
        """Resources that cannot matter: encounters, immunisations, vital signs."""
        out: list[Resource] = []
        for i in range(count):
            kind = i % 3
            if kind == 0:
                out.append(
                    {
                        "resourceType": "Encounter",
                        "id": self.new_id(),
                        "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "type": [{"coding": [{"system": SNOMED, "code": "185349003", "display": "Encounter for check up"}]}],
                        "subject": self.subject,
                        "period": {"start": self.days_ago(30 * i + 1), "end": self.days_ago(30 * i + 1)},
                    }
                )
            elif kind == 1:
                out.append(
                    {
                        "resourceType": "Immunization",
                        "id": self.new_id(),
                        "status": "completed",
                        "vaccineCode": {
                            "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza"}]
                        },
                        "patient": self.subject,
                        "occurrenceDateTime": self.days_ago(365 * (i % 9) + 5),
                    }
                )
            else:
                out.append(
                    {
                        "resourceType": "Observation",
                        "id": self.new_id(),
                        "status": "final",
                        "category": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                        "code": "vital-signs",
                                    }
                                ]
                            }
                        ],
                        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
                        "subject": self.subject,
                        "effectiveDateTime": self.days_ago(7 * i + 2),
                        "valueQuantity": {
                            "value": 60 + i % 30,
                            "unit": "/min",
                            "system": "http://unitsofmeasure.org",
                            "code": "/min",
                        },
                    }
                )
        return out


# -- profiles ------------------------------------------------------------------------------------


def _knee_pain(f: Factory, coding: str = "snomed", **kw: Any) -> Resource:
    if coding == "icd10":
        return f.condition(ICD10, "M25.561", "Pain in right knee", **kw)
    return f.condition(SNOMED, "30989003", "Knee pain", body_site="right knee", **kw)


def _radiculopathy_core(f: Factory, coding: str) -> list[Resource]:
    if coding == "icd10":
        return [
            f.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", onset_days_ago=200),
            f.condition(ICD10, "M54.50", "Low back pain, unspecified", onset_days_ago=400),
            f.condition(ICD10, "M79.651", "Pain in right thigh", onset_days_ago=60),
        ]
    if coding == "snomed":
        return [
            f.condition(SNOMED, "128196005", "Lumbar radiculopathy", onset_days_ago=200),
            f.condition(SNOMED, "279039007", "Low back pain", onset_days_ago=400),
            f.condition(SNOMED, "78514002", "Thigh pain", onset_days_ago=60),
        ]
    return [
        f.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", onset_days_ago=200),
        f.condition(SNOMED, "279039007", "Low back pain", onset_days_ago=400),
        f.condition(SNOMED, "78514002", "Thigh pain", onset_days_ago=60),
    ]


def radiculopathy_knee_pain(f: Factory, coding: str = "mixed") -> list[Resource]:
    return [f.patient(58), _knee_pain(f, "icd10" if coding == "icd10" else "snomed"), *_radiculopathy_core(f, coding)]


def bunion_back_weakness(f: Factory) -> list[Resource]:
    return [
        f.patient(64),
        _knee_pain(f),
        f.condition(ICD10, "M20.11", "Hallux valgus (acquired), right foot", onset_days_ago=1500),
        f.condition(ICD10, "M54.50", "Low back pain, unspecified", onset_days_ago=700),
        f.condition(SNOMED, "26544005", "Muscle weakness", onset_days_ago=120),
    ]


def acl_tear_only(f: Factory) -> list[Resource]:
    return [
        f.patient(27, "male"),
        _knee_pain(f, onset_days_ago=60),
        f.condition(SNOMED, "444470001", "Injury of anterior cruciate ligament", clinical="resolved", onset_days_ago=60),
    ]


def knee_oa_only(f: Factory) -> list[Resource]:
    return [
        f.patient(66),
        f.condition(SNOMED, "239873007", "Osteoarthritis of knee", onset_days_ago=900),
        f.observation(LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", value=6, days_ago=20),
    ]


def hip_oa_knee_pain(f: Factory) -> list[Resource]:
    return [
        f.patient(68, "male"),
        _knee_pain(f),
        f.condition(ICD10, "M16.11", "Unilateral primary osteoarthritis, right hip", onset_days_ago=500),
    ]


def child(f: Factory) -> list[Resource]:
    return [f.patient(12), _knee_pain(f), *_radiculopathy_core(f, "mixed")]


def already_referred(f: Factory) -> list[Resource]:
    return [
        *radiculopathy_knee_pain(f),
        f.service_request(SNOMED, "308482002", "Referral to neurosurgeon", status="active", days_ago=14),
    ]


def cauda_equina(f: Factory) -> list[Resource]:
    return [*radiculopathy_knee_pain(f), f.condition(ICD10, "G83.4", "Cauda equina syndrome", onset_days_ago=2)]


def deceased(f: Factory) -> list[Resource]:
    resources = radiculopathy_knee_pain(f)
    resources[0]["deceasedDateTime"] = f.days_ago(10)
    return resources


def septic_knee(f: Factory) -> list[Resource]:
    return [
        *radiculopathy_knee_pain(f),
        f.condition(ICD10, "M00.061", "Staphylococcal arthritis, right knee", onset_days_ago=1),
    ]


def recent_lumbar_mri(f: Factory) -> list[Resource]:
    return [*radiculopathy_knee_pain(f), f.procedure(LOINC, "24968-0", "MR Lumbar spine", days_ago=45)]


def resolved_knee_complaint(f: Factory) -> list[Resource]:
    return [f.patient(55), _knee_pain(f, clinical="resolved", onset_days_ago=800), *_radiculopathy_core(f, "mixed")]


def entered_in_error(f: Factory) -> list[Resource]:
    return [
        f.patient(61),
        _knee_pain(f),
        f.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", verification="entered-in-error"),
        f.condition(SNOMED, "279039007", "Low back pain", verification="refuted"),
        f.condition(SNOMED, "23056005", "Sciatica", clinical="active", verification="entered-in-error"),
    ]


def elderly_stenosis(f: Factory) -> list[Resource]:
    return [
        f.patient(76),
        _knee_pain(f),
        f.condition(ICD10, "M48.062", "Spinal stenosis, lumbar region with neurogenic claudication", onset_days_ago=300),
    ]


def _foot_seed_signs(f: Factory) -> list[Resource]:
    """A right bunion and flat foot, years old: seed sign 3."""
    return [
        f.condition(ICD10, "M20.11", "Hallux valgus (acquired), right foot", onset_days_ago=1500),
        f.condition(ICD10, "M21.41", "Flat foot [pes planus] (acquired), right foot", onset_days_ago=1500),
    ]


def co_occurrence_only(f: Factory) -> list[Resource]:
    return [
        f.patient(75),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "M54.50", "Low back pain, unspecified", onset_days_ago=700),
        *_foot_seed_signs(f),
        f.condition(ICD10, "M62.81", "Muscle weakness (generalized)", onset_days_ago=120),
    ]


def l3_l4_with_knee_oa(f: Factory, coding: str = "icd10") -> list[Resource]:
    if coding == "snomed":
        spine = [
            f.condition(SNOMED, "128196005", "Lumbar radiculopathy", onset_days_ago=150),
            f.condition(SNOMED, "78514002", "Thigh pain", onset_days_ago=60, body_site="right thigh"),
            f.condition(SNOMED, "239873007", "Osteoarthritis of knee", onset_days_ago=900, body_site="right knee"),
        ]
    else:
        spine = [
            f.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", onset_days_ago=150),
            f.condition(ICD10, "M79.651", "Pain in right thigh", onset_days_ago=60),
            f.condition(ICD10, "M17.11", "Unilateral primary osteoarthritis, right knee", onset_days_ago=900),
        ]
    return [f.patient(71), _knee_pain(f, coding), *spine]


def disc_displacement_thigh(f: Factory) -> list[Resource]:
    return [
        f.patient(52, "male"),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "M51.26", "Other intervertebral disc displacement, lumbar region", onset_days_ago=120),
        f.condition(ICD10, "M79.651", "Pain in right thigh", onset_days_ago=90),
    ]


def side_mismatch(f: Factory) -> list[Resource]:
    return [
        f.patient(60),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "M54.42", "Lumbago with sciatica, left side", onset_days_ago=200),
        f.condition(ICD10, "M79.652", "Pain in left thigh", onset_days_ago=100),
    ]


def differential_diagnoses(f: Factory) -> list[Resource]:
    return [
        f.patient(57),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", verification="differential", onset_days_ago=20),
        f.condition(ICD10, "M51.26", "Other intervertebral disc displacement, lumbar region", verification="differential"),
        f.condition(ICD10, "M79.651", "Pain in right thigh", onset_days_ago=20),
    ]


def double_coded_episode(f: Factory) -> list[Resource]:
    return [
        f.patient(49),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "M54.50", "Low back pain, unspecified", onset_days_ago=100),
        f.condition(ICD10, "M54.41", "Lumbago with sciatica, right side", onset_days_ago=100),
    ]


def post_spine_surgery(f: Factory) -> list[Resource]:
    return [*radiculopathy_knee_pain(f), f.procedure(CPT, "63047", "Laminectomy, lumbar", days_ago=90)]


def referral_with_spinal_reason_text(f: Factory) -> list[Resource]:
    return [
        *radiculopathy_knee_pain(f),
        f.service_request(SNOMED, "308481009", "Referral to orthopedic surgeon", reason_text="Lumbar radiculopathy"),
    ]


def own_referral_signed(f: Factory) -> list[Resource]:
    signed = f.service_request(
        SNOMED, "308481009", "Referral to orthopedic surgeon", identifier=("urn:spine-cds:suggestion", f.new_id())
    )
    return [*radiculopathy_knee_pain(f), signed]


def femoral_nerve_lesion(f: Factory) -> list[Resource]:
    return [
        f.patient(63),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "G57.21", "Lesion of femoral nerve, right lower limb", onset_days_ago=80),
        f.condition(ICD10, "R29.2", "Abnormal reflex", onset_days_ago=80),
        f.condition(ICD10, "M79.651", "Pain in right thigh", onset_days_ago=80),
    ]


def healed_ankle_fracture(f: Factory) -> list[Resource]:
    return [
        *radiculopathy_knee_pain(f, "icd10"),
        f.condition(
            ICD10,
            "S82.51XD",
            "Displaced fracture of medial malleolus of right tibia, subsequent encounter",
            clinical="resolved",
            onset_days_ago=200,
        ),
    ]


def sciatica_with_seed_signs(f: Factory) -> list[Resource]:
    return [
        f.patient(66),
        _knee_pain(f, "icd10"),
        f.condition(ICD10, "M54.31", "Sciatica, right side", onset_days_ago=300),
        *_foot_seed_signs(f),
        f.condition(ICD10, "M62.551", "Muscle wasting and atrophy, not elsewhere classified, right thigh"),
    ]


def noisy_record(f: Factory, noise: int = 400) -> list[Resource]:
    core = radiculopathy_knee_pain(f)
    return [core[0], *f.noise(noise // 2), *core[1:], *f.noise(noise - noise // 2)]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    expected: str  # a band, "ineligible", "suppressed" or "red-flag"
    build: Callable[[Factory], list[Resource]]


PROFILES: tuple[Profile, ...] = (
    Profile(
        "radiculopathy-knee-pain",
        "knee pain with lumbar radiculopathy, low back and thigh pain",
        "likely",
        radiculopathy_knee_pain,
    ),
    Profile(
        "bunion-back-weakness",
        "knee pain, bunion, low back pain, muscle weakness: co-occurrence",
        "unlikely",
        bunion_back_weakness,
    ),
    Profile(
        "co-occurrence-only",
        "75 years old, knee and back pain, bunion, flat foot, weakness; no spinal finding",
        "unlikely",
        co_occurrence_only,
    ),
    Profile("l3-l4-knee-oa", "lumbar radiculopathy with right thigh pain beside right knee OA", "likely", l3_l4_with_knee_oa),
    Profile(
        "l3-l4-knee-oa-snomed", "the same L3/L4 picture coded in SNOMED CT", "likely", lambda f: l3_l4_with_knee_oa(f, "snomed")
    ),
    Profile(
        "disc-displacement-thigh", "lumbar disc displacement (M51.26) with right thigh pain", "likely", disc_displacement_thigh
    ),
    Profile("side-mismatch", "right knee pain; left sciatica and left thigh pain", "unlikely", side_mismatch),
    Profile(
        "differential-diagnoses",
        "radiculopathy and disc displacement recorded only as differentials",
        "unlikely",
        differential_diagnoses,
    ),
    Profile(
        "double-coded-episode",
        "one back episode coded twice: low back pain and lumbago with sciatica",
        "possible",
        double_coded_episode,
    ),
    Profile(
        "sciatica-seed-signs",
        "right sciatica (L5/S1) with bunion, flat foot, thigh wasting",
        "possible",
        sciatica_with_seed_signs,
    ),
    Profile("femoral-nerve-lesion", "femoral nerve lesion, abnormal reflex and thigh pain", "unlikely", femoral_nerve_lesion),
    Profile("healed-ankle-fracture", "radiculopathy profile with a healed ankle fracture", "likely", healed_ankle_fracture),
    Profile(
        "post-spine-surgery", "radiculopathy profile after a lumbar laminectomy 90 days ago", "suppressed", post_spine_surgery
    ),
    Profile(
        "referral-reason-text",
        "radiculopathy profile with an orthopaedic referral for 'lumbar radiculopathy' in text",
        "suppressed",
        referral_with_spinal_reason_text,
    ),
    Profile(
        "own-referral-signed", "radiculopathy profile with the card's own referral signed", "suppressed", own_referral_signed
    ),
    Profile("elderly-stenosis", "76 years old, knee pain, lumbar stenosis", "possible", elderly_stenosis),
    Profile("acl-tear-only", "knee pain after an ACL tear two months ago", "unlikely", acl_tear_only),
    Profile("knee-oa-only", "painful knee osteoarthritis", "unlikely", knee_oa_only),
    Profile("hip-oa-knee-pain", "knee pain with hip osteoarthritis", "unlikely", hip_oa_knee_pain),
    Profile("child", "12 years old with knee and back complaints", "ineligible", child),
    Profile("already-referred", "radiculopathy profile with an active neurosurgery referral", "suppressed", already_referred),
    Profile("cauda-equina", "radiculopathy profile with cauda equina syndrome two days ago", "red-flag", cauda_equina),
    Profile("septic-knee", "radiculopathy profile with a septic right knee", "red-flag", septic_knee),
    Profile("deceased", "radiculopathy profile of a patient who died ten days ago", "ineligible", deceased),
    Profile("recent-lumbar-mri", "radiculopathy profile with a lumbar MRI 45 days ago", "suppressed", recent_lumbar_mri),
    Profile(
        "resolved-knee-complaint", "knee pain resolved two years ago, back findings active", "ineligible", resolved_knee_complaint
    ),
    Profile("entered-in-error", "knee pain; spinal diagnoses refuted or entered in error", "unlikely", entered_in_error),
    Profile(
        "icd10-only", "radiculopathy profile coded only in ICD-10-CM", "likely", lambda f: radiculopathy_knee_pain(f, "icd10")
    ),
    Profile(
        "snomed-only", "radiculopathy profile coded only in SNOMED CT", "likely", lambda f: radiculopathy_knee_pain(f, "snomed")
    ),
    Profile("noisy-record", "radiculopathy profile among 400 unrelated resources", "likely", noisy_record),
)
PROFILES_BY_NAME: Mapping[str, Profile] = {p.name: p for p in PROFILES}


def generate(profile: str | Profile, seed: int = 0, today: date | None = None, patient_id: str | None = None) -> list[Resource]:
    chosen = PROFILES_BY_NAME[profile] if isinstance(profile, str) else profile
    return chosen.build(Factory(seed, today, patient_id))




def searchset(resources: Iterable[Resource]) -> Resource:
    entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def _is_exam(resource: Resource) -> bool:
    """An Observation of the `exam` category: the service asks for those with a search of their own."""
    if resource["resourceType"] != "Observation":
        return False
    return any(c.get("code") == "exam" for concept in resource.get("category") or [] for c in concept.get("coding") or [])


def prefetch_for(resources: Iterable[Resource]) -> dict[str, Any]:
    """The prefetch an EHR would send for these resources, one searchset Bundle per template (Observations by
    code in `observations`, examinations in `examObservations`)."""
    grouped: dict[str, list[Resource]] = {key: [] for key in (*RECORD_TYPES.values(), "examObservations")}
    patient: Resource | None = None
    for resource in resources:
        if resource["resourceType"] == "Patient":
            patient = resource
            continue
        key = "examObservations" if _is_exam(resource) else RECORD_TYPES.get(resource["resourceType"])
        if key:
            grouped[key].append(resource)
    out: dict[str, Any] = {"patient": patient}
    out.update({key: searchset(items) for key, items in grouped.items() if key != "patient"})
    return out


# -- synthetic FHIR Bulk Data exports --------------------------------------------------------------


@dataclass(frozen=True)
class BulkExport:
    """What `write_bulk_export` wrote: the files, and each patient's profile and intended outcome."""

    directory: Path
    files: tuple[Path, ...]
    profiles: Mapping[str, str]  # patient id -> profile name
    expected: Mapping[str, str]  # patient id -> the profile's intended outcome
    resources: int

    @property
    def worklist(self) -> frozenset[str]:
        """The patients a population run should put on the worklist: eligible, unsuppressed, possible or likely,
        and eligible patients with a red flag (in a section of their own)."""
        return frozenset(p for p, outcome in self.expected.items() if outcome in ("possible", "likely", "red-flag"))

    @property
    def red_flagged(self) -> frozenset[str]:
        return frozenset(p for p, outcome in self.expected.items() if outcome == "red-flag")


def write_bulk_export(
    directory: str | Path,
    patients: int,
    resources_per_patient: int = 20,
    seed: int = 0,
    profiles: Sequence[str | Profile] = PROFILES,
    split_files: int = 1,
    gzip: bool = False,
    today: date | None = None,
) -> BulkExport:
    """Write a FHIR Bulk Data export of `patients` synthetic patients into `directory`.

    Patient n follows profiles[n % len(profiles)] and is padded with unrelated resources (encounters,
    immunisations, vital signs: `Factory.noise`) up to `resources_per_patient` when its profile has fewer.
    One NDJSON file per resource type (`Observation.000.ndjson`, ...); with `split_files` > 1 the lines
    of a type are dealt round-robin over that many files, so one patient's resources of a type land in
    several files; with `gzip` every file is written as `.ndjson.gz`. Same arguments, same bytes.
    """
    import gzip as gzip_module

    import orjson

    chosen = [PROFILES_BY_NAME[p] if isinstance(p, str) else p for p in profiles]
    if not chosen:
        raise ValueError("at least one profile is needed")
    if split_files < 1:
        raise ValueError("split_files must be at least 1")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".ndjson.gz" if gzip else ".ndjson"
    handles: dict[tuple[str, int], IO[bytes]] = {}
    raw_files: list[IO[bytes]] = []
    dealt: dict[str, int] = {}
    profile_of: dict[str, str] = {}
    expected: dict[str, str] = {}
    total = 0

    def sink(resource_type: str) -> IO[bytes]:
        n = dealt.get(resource_type, 0)
        dealt[resource_type] = n + 1
        key = (resource_type, n % split_files)
        if key not in handles:
            raw = (out / f"{resource_type}.{key[1]:03d}{suffix}").open("wb")
            raw_files.append(raw)
            packed = gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=5, mtime=0) if gzip else None
            handles[key] = cast(IO[bytes], packed) if packed else raw
        return handles[key]

    try:
        for n in range(patients):
            profile = chosen[n % len(chosen)]
            factory = Factory(seed * 10_000_019 + n, today)
            resources = profile.build(factory)
            resources += factory.noise(max(0, resources_per_patient - len(resources)))
            profile_of[factory.patient_id] = profile.name
            expected[factory.patient_id] = profile.expected
            for resource in resources:
                sink(resource["resourceType"]).write(orjson.dumps(resource) + b"\n")
            total += len(resources)
    finally:
        for handle in handles.values():
            handle.close()  # a GzipFile writes its trailer here but leaves the file it wraps open
        for raw in raw_files:
            raw.close()
    files = tuple(sorted(out / f"{t}.{i:03d}{suffix}" for t, i in handles))
    return BulkExport(out, files, profile_of, expected, total)
