"""Reading FHIR R4 JSON into evidence: input shapes, status rules, dates, laterality, validation and cost."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from hooks.fhir import PatientRecord, RecordReader, fhir_date, read_orders, read_record, validation_problem
from hooks.model import Model, load_model
from hooks.synthetic import ICD10, LOINC, SNOMED, Factory, searchset

TODAY = date(2026, 11, 24)
PATIENT_ID = "pat-1"
LOCAL = "http://hospital.example/codes"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CPT = "http://www.ama-assn.org/go/cpt"

Resource = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------------


def factory(seed: int = 0, patient_id: str = PATIENT_ID) -> Factory:
    return Factory(seed=seed, today=TODAY, patient_id=patient_id)


def radiculopathy(f: Factory, **kw: Any) -> Resource:
    return f.condition(ICD10, "M54.16", "Radiculopathy, lumbar region", **kw)


def outcome(diagnostics: str = "Patient/secret-42 not found", severity: str = "error", code: str = "not-found") -> Resource:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def value_sets(record: PatientRecord) -> set[str]:
    return {vs for vs, items in record.evidence.items() if items}


def references(record: PatientRecord) -> list[str]:
    return [e.reference for items in record.evidence.values() for e in items]


def only(record: PatientRecord, value_set: str) -> Any:
    items = record.of(value_set)
    assert len(items) == 1, f"{value_set}: {items}"
    return items[0]


def read(model: Model, *resources: Resource, patient_id: str | None = PATIENT_ID) -> PatientRecord:
    return read_record(model, resources, patient_id=patient_id)


@pytest.fixture(scope="module")
def site_model() -> Model:
    """The shipped model with a site's local strength and root examination codes."""
    return load_model(
        site={
            "codes": {
                "strength_exam": [{"system": LOCAL, "code": "QSTR"}],
                "femoral_stretch_exam": [{"system": LOCAL, "code": "FNST"}],
            }
        }
    )


# -- fhir_date -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2024", date(2024, 1, 1), id="year"),
        pytest.param("2024-05", date(2024, 5, 1), id="year-month"),
        pytest.param("2024-05-17", date(2024, 5, 17), id="date"),
        pytest.param("2024-05-17T23:30:00-05:00", date(2024, 5, 17), id="datetime-negative-offset"),
        pytest.param("2024-05-17T00:30:00+14:00", date(2024, 5, 17), id="datetime-positive-offset"),
        pytest.param("2024-05-17T10:00:00Z", date(2024, 5, 17), id="instant-utc"),
        pytest.param("2024-05-17T10:00:00.123+01:00", date(2024, 5, 17), id="fractional-seconds"),
        pytest.param("2024-02-29", date(2024, 2, 29), id="leap-day"),
        pytest.param("garbage", None, id="garbage"),
        pytest.param("not-a-date", None, id="words-with-dashes"),
        pytest.param("", None, id="empty"),
        pytest.param("202", None, id="too-short"),
        pytest.param("2024-13-01", None, id="month-13"),
        pytest.param("2023-02-29", None, id="not-a-leap-year"),
        pytest.param("2024-05-32", None, id="day-32"),
        pytest.param("2024-xx", None, id="bad-month"),
        pytest.param(None, None, id="none"),
        pytest.param(20240517, None, id="number"),
        pytest.param(["2024-05-17"], None, id="list"),
    ],
)
def test_fhir_date(value: Any, expected: date | None) -> None:
    assert fhir_date(value) == expected


# -- prefetch shapes -------------------------------------------------------------------------------


def test_prefetch_single_resource(model: Model) -> None:
    f = factory()
    record = read_record(model, prefetch={"patient": f.patient(60), "conditions": radiculopathy(f)}, patient_id=PATIENT_ID)
    assert record.patient_reference == f"Patient/{PATIENT_ID}"
    assert record.birth_date == date(1966, 3, 1)
    assert value_sets(record) == {"lumbar_radiculopathy"}
    assert record.notes == []


def test_prefetch_searchset_bundle(model: Model) -> None:
    f = factory()
    conditions = [radiculopathy(f), f.condition(SNOMED, "279039007", "Low back pain"), f.condition(ICD10, "M20.11", "Bunion")]
    record = read_record(model, prefetch={"conditions": searchset(conditions)}, patient_id=PATIENT_ID)
    assert value_sets(record) == {"lumbar_radiculopathy", "low_back_pain", "bunion"}
    assert sorted(references(record)) == sorted(f"Condition/{c['id']}" for c in conditions)
    assert record.resource_count == 3
    assert record.notes == []


def test_prefetch_paginated_bundles(model: Model) -> None:
    f = factory()
    first, second = radiculopathy(f), f.condition(SNOMED, "279039007", "Low back pain")
    pages = [searchset([first]), searchset([second])]
    record = read_record(model, prefetch={"conditions": pages}, patient_id=PATIENT_ID)
    assert value_sets(record) == {"lumbar_radiculopathy", "low_back_pain"}
    assert record.resource_count == 2


def test_prefetch_none_is_nothing(model: Model) -> None:
    record = read_record(model, prefetch={"patient": None, "conditions": None}, patient_id=PATIENT_ID)
    assert record == PatientRecord(patient_id=PATIENT_ID)


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Bundle", "type": "searchset", "total": 0},
        {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
        {"resourceType": "Bundle", "type": "searchset", "entry": None},
        [],
    ],
    ids=["no-entry", "empty-entry", "null-entry", "no-pages"],
)
def test_prefetch_empty_bundle(model: Model, bundle: Any) -> None:
    record = read_record(model, prefetch={"conditions": bundle}, patient_id=PATIENT_ID)
    assert record.evidence == {}
    assert record.notes == []
    assert record.resource_count == 0


def test_prefetch_operation_outcome_is_a_note(model: Model) -> None:
    f = factory()
    record = read_record(
        model,
        prefetch={"conditions": searchset([radiculopathy(f)]), "observations": outcome("Patient/secret-42 is unknown")},
        patient_id=PATIENT_ID,
    )
    assert value_sets(record) == {"lumbar_radiculopathy"}
    assert len(record.notes) == 1
    note = record.notes[0]
    assert "'observations'" in note
    assert "error/not-found" in note
    assert "secret-42" not in note
    assert "unknown" not in note


def test_operation_outcome_without_issues(model: Model) -> None:
    record = read_record(model, prefetch={"patient": {"resourceType": "OperationOutcome"}})
    assert len(record.notes) == 1
    assert "'patient'" in record.notes[0] and "no issues" in record.notes[0]


def test_bundle_entry_with_search_mode_outcome(model: Model) -> None:
    f = factory()
    bundle = searchset([radiculopathy(f)])
    bundle["entry"].append(
        {"resource": outcome("too many results for secret-query", "warning", "too-costly"), "search": {"mode": "outcome"}}
    )
    record = read_record(model, prefetch={"conditions": bundle}, patient_id=PATIENT_ID)
    assert value_sets(record) == {"lumbar_radiculopathy"}
    assert len(record.notes) == 1
    assert "warning/too-costly" in record.notes[0]
    assert "'conditions'" in record.notes[0]
    assert "secret-query" not in record.notes[0]


def test_operation_outcome_entry_without_search_mode(model: Model) -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": outcome()}]}
    record = read_record(model, prefetch={"conditions": bundle})
    assert len(record.notes) == 1
    assert "secret-42" not in record.notes[0]


@pytest.mark.parametrize(
    "value",
    ["not a resource", 42, {"entry": []}, {"resourceType": 7}, [searchset([]), "page two is a string"]],
    ids=["string", "number", "no-resource-type", "resource-type-not-a-string", "string-page"],
)
def test_prefetch_non_resource_is_a_note(model: Model, value: Any) -> None:
    record = read_record(model, prefetch={"conditions": value})
    assert record.notes == ["Prefetch 'conditions' is not a FHIR resource and was ignored."]
    assert record.evidence == {}


def test_loose_resources_and_prefetch_together(model: Model) -> None:
    f = factory()
    record = read_record(
        model,
        [f.condition(SNOMED, "279039007", "Low back pain")],
        prefetch={"conditions": radiculopathy(f)},
        patient_id=PATIENT_ID,
    )
    assert value_sets(record) == {"lumbar_radiculopathy", "low_back_pain"}


def test_bundle_entry_without_id_uses_full_url(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    del condition["id"]
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"fullUrl": "urn:uuid:abc", "resource": condition}]}
    record = read_record(model, prefetch={"conditions": bundle})
    assert only(record, "lumbar_radiculopathy").reference == "urn:uuid:abc"


@pytest.mark.parametrize(
    "entry",
    [None, "entry", {"resource": "Condition"}, {"search": {"mode": "match"}}, {"resource": {"resourceType": ["Condition"]}}],
    ids=["null", "string", "resource-string", "no-resource", "resource-type-list"],
)
def test_malformed_bundle_entries_are_skipped(model: Model, entry: Any) -> None:
    f = factory()
    bundle = searchset([radiculopathy(f)])
    bundle["entry"].insert(0, entry)
    record = read_record(model, prefetch={"conditions": bundle})
    assert value_sets(record) == {"lumbar_radiculopathy"}


# -- NDJSON ----------------------------------------------------------------------------------------


def test_ndjson_valid_line(model: Model) -> None:
    f = factory()
    reader = RecordReader(model, PATIENT_ID)
    reader.add_ndjson_line(orjson.dumps(f.patient(60)))
    reader.add_ndjson_line(orjson.dumps(radiculopathy(f)))
    reader.add_ndjson_line(orjson.dumps(f.condition(SNOMED, "279039007", "Low back pain")).decode())  # str works too
    assert reader.record.birth_date == date(1966, 3, 1)
    assert value_sets(reader.record) == {"lumbar_radiculopathy", "low_back_pain"}
    assert reader.record.notes == []


@pytest.mark.parametrize(
    "line", [b"{not json", b'{"resourceType": "Condition"', b"\xff\xfe", b""], ids=["syntax", "truncated", "bad-utf8", "empty"]
)
def test_ndjson_invalid_json_is_a_note(model: Model, line: bytes) -> None:
    reader = RecordReader(model)
    reader.add_ndjson_line(line)
    assert reader.record.notes == ["An NDJSON line is not valid JSON and was ignored."]


@pytest.mark.parametrize(
    "line", [b'[{"resourceType": "Condition"}]', b'"Condition"', b"42", b"null"], ids=["array", "string", "number", "null"]
)
def test_ndjson_non_object_is_a_note(model: Model, line: bytes) -> None:
    reader = RecordReader(model)
    reader.add_ndjson_line(line)
    assert reader.record.notes == ["An NDJSON line is not a FHIR resource and was ignored."]
    assert reader.record.evidence == {}


def test_ndjson_resource_type_not_a_string(model: Model) -> None:
    reader = RecordReader(model)
    reader.add_ndjson_line(b'{"resourceType": {"a": 1}, "id": "x"}')
    reader.add_ndjson_line(b'{"resourceType": ["Condition"], "id": "y"}')
    assert reader.record.evidence == {}
    assert reader.record.validated_count == 0


# -- Condition status ------------------------------------------------------------------------------


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_condition_ignored_verification(model: Model, verification: str) -> None:
    f = factory()
    record = read(model, radiculopathy(f, verification=verification))
    assert record.evidence == {}
    assert record.validated_count == 0


@pytest.mark.parametrize("verification", ["confirmed", "provisional", "differential", "unconfirmed"])
def test_condition_other_verification_is_kept(model: Model, verification: str) -> None:
    f = factory()
    evidence = only(read(model, radiculopathy(f, verification=verification)), "lumbar_radiculopathy")
    assert evidence.verification == verification


@pytest.mark.parametrize("clinical", ["active", "recurrence", "relapse", "inactive", "remission", "resolved"])
def test_condition_clinical_status_is_recorded(model: Model, clinical: str) -> None:
    f = factory()
    condition = radiculopathy(f, clinical=clinical)
    record = read(model, condition)
    evidence = only(record, "lumbar_radiculopathy")
    assert evidence.status == clinical
    assert evidence.resource_type == "Condition"
    assert evidence.reference == f"Condition/{condition['id']}"
    assert evidence.coding.system == ICD10 and evidence.coding.code == "M54.16"
    assert evidence.coding.display == "Radiculopathy, lumbar region"
    assert evidence.positive is True
    assert record.notes == []


def test_condition_without_clinical_status_is_read_as_active(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    del condition["clinicalStatus"]
    record = read(model, condition)
    assert only(record, "lumbar_radiculopathy").status == "active"
    assert record.notes == [f"Condition/{condition['id']} has no clinical status; it was read as active."]


def test_condition_with_uncoded_clinical_status_is_read_as_active(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    condition["clinicalStatus"] = {"text": "Active"}
    record = read(model, condition)
    assert only(record, "lumbar_radiculopathy").status == "active"
    assert len(record.notes) == 1 and "no clinical status" in record.notes[0]


def test_condition_without_verification_status(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    del condition["verificationStatus"]
    evidence = only(read(model, condition), "lumbar_radiculopathy")
    assert evidence.verification is None
    assert evidence.status == "active"


def test_condition_with_several_matching_codings(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    condition["code"]["coding"].append({"system": SNOMED, "code": "128196005", "display": "Lumbar radiculopathy"})
    condition["code"]["coding"].append({"system": SNOMED, "code": "279039007"})
    record = read(model, condition)
    assert len(record.of("lumbar_radiculopathy")) == 2
    assert only(record, "low_back_pain").coding.display is None
    assert record.validated_count == 1


def test_malformed_codings_do_not_hide_a_matching_one(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    condition["code"]["coding"][0:0] = ["M54.16", {"system": [ICD10], "code": "M54.16"}, {"system": ICD10, "code": {"v": 1}}]
    record = read_record(model, [condition])  # no exception; the string coding makes it invalid FHIR
    assert record.evidence == {}
    assert len(record.notes) == 1 and "not valid FHIR" in record.notes[0]


# -- Observation status and values -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_observation_counted_status(model: Model, status: str) -> None:
    f = factory()
    observation = f.observation(LOINC, "72514-3", "Pain severity", value=6, status=status, days_ago=10)
    evidence = only(read(model, observation), "pain_severity")
    assert evidence.status == status
    assert evidence.value == 6.0
    assert evidence.date == TODAY - timedelta(days=10)
    assert evidence.resource_type == "Observation"


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled", "entered-in-error", "unknown", None, ["final"]])
def test_observation_other_status_is_ignored(model: Model, status: Any) -> None:
    f = factory()
    observation = f.observation(LOINC, "72514-3", "Pain severity", value=6)
    observation["status"] = status
    record = read(model, observation)
    assert record.evidence == {}
    assert record.validated_count == 0


def test_observation_value_codeable_concept_is_matched(model: Model) -> None:
    f = factory()
    observation = f.observation(LOCAL, "EXAM-FINDING", "Examination finding")
    observation["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": "249939004", "display": "Proximal weakness"}]}
    record = read(model, observation)
    assert value_sets(record) == {"hip_quad_weakness"}
    evidence = only(record, "hip_quad_weakness")
    assert evidence.coding.code == "249939004"
    assert evidence.positive is True


def test_observation_value_integer_is_read(model: Model) -> None:
    f = factory()
    observation = f.observation(LOINC, "72514-3", "Pain severity")
    observation["valueInteger"] = 4
    assert only(read(model, observation), "pain_severity").value == 4.0


# -- site-mapped examinations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grade", "positive"),
    [(0, True), (3, True), (4, True), (4.5, True), (5, False), (None, False)],
)
def test_strength_exam_grade(site_model: Model, grade: float | None, positive: bool) -> None:
    f = factory()
    observation = f.observation(LOCAL, "QSTR", "Quadriceps strength", value=grade)
    evidence = only(read(site_model, observation), "strength_exam")
    assert evidence.positive is positive
    assert evidence.value == (None if grade is None else float(grade))


def test_strength_exam_needs_the_site_code(model: Model) -> None:
    f = factory()
    assert read(model, f.observation(LOCAL, "QSTR", "Quadriceps strength", value=3)).evidence == {}


@pytest.mark.parametrize(
    ("extra", "positive"),
    [
        pytest.param({"interpretation": [concept(INTERPRETATION, "POS")]}, True, id="interpretation-POS"),
        pytest.param({"interpretation": [concept(INTERPRETATION, "A")]}, True, id="interpretation-A"),
        pytest.param(
            {"interpretation": [concept(INTERPRETATION, "N"), concept(INTERPRETATION, "AA")]}, True, id="second-interpretation"
        ),
        pytest.param({"valueBoolean": True}, True, id="valueBoolean-true"),
        pytest.param({"valueCodeableConcept": concept(INTERPRETATION, "POS")}, True, id="value-POS"),
        pytest.param({"interpretation": [concept(INTERPRETATION, "N")]}, False, id="interpretation-N"),
        pytest.param({"interpretation": [concept(INTERPRETATION, "NEG")]}, False, id="interpretation-NEG"),
        pytest.param({"interpretation": [concept(LOCAL, "POS")]}, False, id="POS-in-another-system"),
        pytest.param({"valueBoolean": False}, False, id="valueBoolean-false"),
        pytest.param({"valueString": "positive"}, False, id="free-text"),
        pytest.param({}, False, id="nothing"),
    ],
)
def test_femoral_stretch_exam_positive(site_model: Model, extra: dict[str, Any], positive: bool) -> None:
    f = factory()
    observation = f.observation(LOCAL, "FNST", "Femoral nerve stretch test") | extra
    record = read(site_model, observation)
    assert only(record, "femoral_stretch_exam").positive is positive
    assert record.notes == []


# -- dates -----------------------------------------------------------------------------------------


def test_condition_onset_date_time(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f, onset_days_ago=200)
    condition["recordedDate"] = "2020-01-01"
    assert only(read(model, condition), "lumbar_radiculopathy").date == TODAY - timedelta(days=200)


def test_condition_onset_date_time_with_offset(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    condition["onsetDateTime"] = "2025-06-30T22:15:00-07:00"
    assert only(read(model, condition), "lumbar_radiculopathy").date == date(2025, 6, 30)


def test_condition_onset_period_start(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    del condition["onsetDateTime"]
    condition["onsetPeriod"] = {"start": "2025-03-04", "end": "2025-09-01"}
    condition["recordedDate"] = "2025-10-10"
    assert only(read(model, condition), "lumbar_radiculopathy").date == date(2025, 3, 4)


def test_condition_recorded_date_fallback(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    del condition["onsetDateTime"]
    condition["recordedDate"] = "2025-10-10T08:00:00+02:00"
    assert only(read(model, condition), "lumbar_radiculopathy").date == date(2025, 10, 10)


def test_condition_without_any_date(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    del condition["onsetDateTime"], condition["recordedDate"]
    condition["onsetString"] = "childhood"
    assert only(read(model, condition), "lumbar_radiculopathy").date is None


def test_observation_effective_date_time(model: Model) -> None:
    f = factory()
    observation = f.observation(LOINC, "72514-3", "Pain severity", value=3)
    observation["effectiveDateTime"] = "2026-01-15T09:30:00Z"
    assert only(read(model, observation), "pain_severity").date == date(2026, 1, 15)


def test_observation_effective_period_and_issued(model: Model) -> None:
    f = factory()
    by_period = f.observation(LOINC, "72514-3", "Pain severity", value=3)
    del by_period["effectiveDateTime"]
    by_period["effectivePeriod"] = {"start": "2026-02-01", "end": "2026-02-03"}
    by_issued = f.observation(LOINC, "72514-3", "Pain severity", value=3)
    del by_issued["effectiveDateTime"]
    by_issued["issued"] = "2026-03-05T10:00:00+00:00"
    record = read(model, by_period, by_issued)
    assert sorted(e.date for e in record.of("pain_severity")) == [date(2026, 2, 1), date(2026, 3, 5)]


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ({"start": "2025-01-10T08:00:00Z", "end": "2025-01-12T17:00:00Z"}, date(2025, 1, 12)),
        ({"start": "2025-01-10"}, date(2025, 1, 10)),
        ({"end": "2025-01-12"}, date(2025, 1, 12)),
    ],
    ids=["start-and-end-gives-end", "start-only", "end-only"],
)
def test_procedure_performed_period(model: Model, period: dict[str, str], expected: date) -> None:
    f = factory()
    procedure = f.procedure(LOINC, "24968-0", "MR Lumbar spine")
    del procedure["performedDateTime"]
    procedure["performedPeriod"] = period
    record = read(model, procedure)
    assert only(record, "lumbar_mri").date == expected
    assert [i.date for i in record.interventions] == [expected]


def test_procedure_performed_date_time(model: Model) -> None:
    f = factory()
    record = read(model, f.procedure(LOINC, "24968-0", "MR Lumbar spine", days_ago=45, status="completed"))
    evidence = only(record, "lumbar_mri")
    assert evidence.date == TODAY - timedelta(days=45)
    assert evidence.status == "completed"
    (intervention,) = record.interventions
    assert intervention.resource_type == "Procedure"
    assert intervention.value_sets == {"lumbar_mri"}
    assert intervention.status == "completed"


def test_service_request_authored_on(model: Model) -> None:
    f = factory()
    request = f.service_request(SNOMED, "308482002", "Referral to neurosurgeon", days_ago=14)
    record = read(model, request)
    (intervention,) = record.interventions
    assert intervention.date == TODAY - timedelta(days=14)
    assert intervention.value_sets == {"spine_referral", "referral"}
    assert intervention.status == "active"
    assert record.evidence == {}  # a request is an intervention, not evidence of a finding


@pytest.mark.parametrize("resource_type", ["procedure", "service_request"])
def test_entered_in_error_interventions_are_ignored(model: Model, resource_type: str) -> None:
    f = factory()
    make = getattr(f, resource_type)
    record = read(model, make(SNOMED, "308482002", "Referral to neurosurgeon", status="entered-in-error"))
    assert record.interventions == []
    assert record.evidence == {}


# -- laterality ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "side"),
    [("M25.562", "left"), ("M25561", "right"), ("m25.562", "left"), ("M25.569", None)],
    ids=["left", "right-dotless", "lowercase", "unspecified"],
)
def test_laterality_from_icd_code(model: Model, code: str, side: str | None) -> None:
    f = factory()
    assert only(read(model, f.condition(ICD10, code, "Knee pain")), "knee_pain").laterality == side


def test_laterality_from_icd_code_of_another_value_set(model: Model) -> None:
    f = factory()
    assert only(read(model, f.condition(ICD10, "M54.42", "Lumbago with sciatica, left")), "sciatica").laterality == "left"


@pytest.mark.parametrize(
    ("body_site", "side"),
    [
        pytest.param([concept(SNOMED, "24028007")], "right", id="snomed-right"),
        pytest.param([concept(SNOMED, "7771000")], "left", id="snomed-left"),
        pytest.param([concept(SNOMED, "51440002")], "bilateral", id="snomed-both"),
        pytest.param([concept(SNOMED, "72696002"), concept(SNOMED, "24028007")], "right", id="knee-then-side"),
        pytest.param([{"text": "left knee"}], "left", id="text-left"),
        pytest.param([{"text": "Right Knee"}], "right", id="text-right-capitalised"),
        pytest.param([{"text": "both knees"}], "bilateral", id="text-both"),
        pytest.param([{"text": "left and right knee"}], "bilateral", id="text-left-and-right"),
        pytest.param([{"text": "knee"}], None, id="text-without-side"),
        pytest.param([concept(SNOMED, "72696002")], None, id="knee-without-side"),
    ],
)
def test_laterality_from_body_site(model: Model, body_site: list[dict[str, Any]], side: str | None) -> None:
    f = factory()
    condition = f.condition(SNOMED, "30989003", "Knee pain")
    condition["bodySite"] = body_site
    assert only(read(model, condition), "knee_pain").laterality == side


def test_laterality_absent_for_snomed_code_without_body_site(model: Model) -> None:
    f = factory()
    assert only(read(model, f.condition(SNOMED, "30989003", "Knee pain")), "knee_pain").laterality is None


# -- validation ------------------------------------------------------------------------------------


def _invalid_conditions(f: Factory) -> list[Any]:
    missing_subject = radiculopathy(f, onset_days_ago=321)
    del missing_subject["subject"]
    bad_date = radiculopathy(f)
    bad_date["onsetDateTime"] = "1987-13-45"
    numeric_date = radiculopathy(f)
    numeric_date["onsetDateTime"] = 12345
    wrong_type = radiculopathy(f)
    wrong_type["note"] = [{"text": 987654}]
    unknown_field = radiculopathy(f)
    unknown_field["favouriteColour"] = "ultramarine-secret"
    return [
        pytest.param(missing_subject, "subject", f.days_ago(321), id="missing-subject"),
        pytest.param(bad_date, "onsetDateTime", "1987-13-45", id="impossible-date"),
        pytest.param(numeric_date, "onsetDateTime", "12345", id="numeric-date"),
        pytest.param(wrong_type, "note", "987654", id="wrong-type"),
        pytest.param(unknown_field, "favouriteColour", "ultramarine-secret", id="unknown-field"),
    ]


@pytest.mark.parametrize(("condition", "field", "value"), _invalid_conditions(factory(seed=7)))
def test_invalid_relevant_resource_becomes_a_note(model: Model, condition: Resource, field: str, value: str) -> None:
    f = factory()
    valid = f.condition(SNOMED, "279039007", "Low back pain")
    record = read(model, condition, valid)  # never raises
    assert value_sets(record) == {"low_back_pain"}  # the invalid one is left out, the valid one kept
    assert record.validated_count == 2
    (note,) = record.notes
    assert note.startswith(f"Condition/{condition['id']} is not valid FHIR R4 (")
    assert field in note
    # no patient data in the note: neither the value at fault nor the record's other values
    assert value not in note
    for secret in ("M54.16", "Radiculopathy", PATIENT_ID, condition["recordedDate"]):
        assert secret not in note


def test_invalid_patient_becomes_a_note(model: Model) -> None:
    f = factory()
    patient = f.patient(50)
    patient["birthDate"] = "1976-02-31"
    record = read(model, patient, radiculopathy(f))
    assert record.patient_reference is None
    assert record.birth_date is None
    assert len(record.notes) == 1
    assert record.notes[0].startswith(f"Patient/{PATIENT_ID} is not valid FHIR R4")
    assert "1976-02-31" not in record.notes[0]
    assert value_sets(record) == {"lumbar_radiculopathy"}


def test_patient_without_birth_date(model: Model) -> None:
    f = factory()
    patient = f.patient(50)
    del patient["birthDate"]
    record = read(model, patient)
    assert record.patient_reference == f"Patient/{PATIENT_ID}"
    assert record.birth_date is None
    assert record.notes == ["The patient has no birth date, so age is unknown."]


def test_patient_id_taken_from_patient_when_not_given(model: Model) -> None:
    f = factory()
    record = read(model, f.patient(40), patient_id=None)
    assert record.patient_id == PATIENT_ID


def test_invalid_irrelevant_resource_is_not_validated(model: Model) -> None:
    f = factory()
    unrelated = f.condition(SNOMED, "38341003", "Hypertension")
    del unrelated["subject"]
    record = read(model, unrelated)
    assert record.notes == []
    assert record.validated_count == 0


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Condition", "subject": {"reference": "Patient/x"}},
        {"resourceType": "Patient", "id": "x", "birthDate": "1970-01-01"},
    ],
)
def test_validation_problem_none_for_valid(resource: Resource) -> None:
    assert validation_problem(resource) is None


def test_validation_problem_for_unknown_type() -> None:
    assert validation_problem({"resourceType": "NoSuchThing"}) == "unknown resource type 'NoSuchThing'"


# -- cost ------------------------------------------------------------------------------------------


def test_only_relevant_resources_are_validated(model: Model) -> None:
    f = factory(seed=3)
    relevant = [
        f.patient(58),
        radiculopathy(f),
        f.condition(SNOMED, "279039007", "Low back pain"),
        f.condition(SNOMED, "30989003", "Knee pain", body_site="right knee"),
    ]
    unmatched = [f.condition(SNOMED, "38341003", "Hypertension"), f.procedure(SNOMED, "80146002", "Appendectomy")]
    noise = f.noise(1000)
    assert {r["resourceType"] for r in noise} >= {"Observation", "Encounter", "Immunization"}
    resources = [relevant[0], *noise[:500], *relevant[1:], *unmatched, *noise[500:]]
    record = read_record(model, prefetch={"everything": searchset(resources)}, patient_id=PATIENT_ID)
    assert record.resource_count == len(resources) == 1006
    assert record.validated_count == len(relevant) == 4
    assert value_sets(record) == {"lumbar_radiculopathy", "low_back_pain", "knee_pain"}
    assert record.notes == []


# -- patients and duplicates -----------------------------------------------------------------------


def test_resource_of_another_patient_is_ignored(model: Model) -> None:
    f = factory()
    other = factory(seed=5, patient_id="other")
    foreign = radiculopathy(other)
    record = read(model, f.patient(60), foreign, f.condition(SNOMED, "279039007", "Low back pain"))
    assert value_sets(record) == {"low_back_pain"}
    assert record.notes == [f"Condition/{foreign['id']} belongs to another patient and was ignored."]


@pytest.mark.parametrize(
    "reference",
    ["https://ehr.example/fhir/Patient/other", "Patient/other/_history/2"],
    ids=["absolute-url", "versioned"],
)
def test_resource_of_another_patient_by_full_reference_is_ignored(model: Model, reference: str) -> None:
    f = factory()
    foreign = radiculopathy(f)
    foreign["subject"] = {"reference": reference}
    record = read(model, foreign)
    assert record.evidence == {}
    assert len(record.notes) == 1 and "another patient" in record.notes[0]


@pytest.mark.parametrize(
    "reference",
    [
        f"Patient/{PATIENT_ID}",
        f"https://ehr.example/fhir/Patient/{PATIENT_ID}",
        f"Patient/{PATIENT_ID}/_history/3",
        "urn:uuid:1234",
    ],
    ids=["relative", "absolute-url", "versioned", "bundle-local"],
)
def test_resource_of_this_patient_is_kept(model: Model, reference: str) -> None:
    f = factory()
    condition = radiculopathy(f)
    condition["subject"] = {"reference": reference}
    record = read(model, condition)
    assert value_sets(record) == {"lumbar_radiculopathy"}
    assert record.notes == []


def test_without_patient_id_every_subject_is_accepted(model: Model) -> None:
    other = factory(seed=5, patient_id="other")
    record = read(model, radiculopathy(other), patient_id=None)
    assert value_sets(record) == {"lumbar_radiculopathy"}


def test_patient_resource_of_another_patient_is_ignored(model: Model) -> None:
    f = factory()
    other = factory(seed=5, patient_id="other")
    record = read(model, other.patient(80), f.patient(40))
    assert record.patient_id == PATIENT_ID
    assert record.patient_reference == f"Patient/{PATIENT_ID}"
    assert record.birth_date == date(1986, 3, 1)
    assert record.notes == ["Patient/other belongs to another patient and was ignored."]


def test_first_patient_wins_when_no_patient_id(model: Model) -> None:
    record = read(model, factory(patient_id="a").patient(40), factory(patient_id="b").patient(80), patient_id=None)
    assert record.patient_id == "a"
    assert record.birth_date == date(1986, 3, 1)


def test_duplicate_across_pages_is_read_once(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    pages = [searchset([condition, f.condition(SNOMED, "279039007", "Low back pain")]), searchset([condition])]
    record = read_record(model, prefetch={"conditions": pages, "again": condition}, patient_id=PATIENT_ID)
    assert len(record.of("lumbar_radiculopathy")) == 1
    assert len(record.of("low_back_pain")) == 1
    assert record.validated_count == 2


def test_duplicate_patient_is_read_once(model: Model) -> None:
    f = factory()
    record = read(model, f.patient(40), f.patient(40))
    assert record.validated_count == 1
    assert record.notes == []


def test_same_id_different_type_is_not_a_duplicate(model: Model) -> None:
    f = factory()
    condition = radiculopathy(f)
    procedure = f.procedure(LOINC, "24968-0", "MR Lumbar spine") | {"id": condition["id"]}
    record = read(model, condition, procedure)
    assert value_sets(record) == {"lumbar_radiculopathy", "lumbar_mri"}


def test_resources_without_id_are_not_duplicates(model: Model) -> None:
    f = factory()
    first, second = radiculopathy(f), f.condition(SNOMED, "279039007", "Low back pain")
    del first["id"], second["id"]
    record = read(model, first, second)
    assert value_sets(record) == {"lumbar_radiculopathy", "low_back_pain"}


# -- read_orders -----------------------------------------------------------------------------------


def _orders(f: Factory) -> tuple[Resource, Resource, Resource, Resource]:
    knee_mri = f.service_request(SNOMED, "241641004", "MRI of knee", status="draft", days_ago=0)
    knee_xray = f.service_request(LOINC, "28565-0", "Knee X-ray", status="draft", days_ago=0)
    chest_xray = f.service_request(SNOMED, "399208008", "Plain chest X-ray", status="draft", days_ago=0)
    arthroplasty = f.procedure(CPT, "27447", "Total knee arthroplasty", status="preparation", days_ago=0)
    return knee_mri, knee_xray, chest_xray, arthroplasty


def _ref(resource: Resource) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def test_read_orders_all(model: Model) -> None:
    f = factory()
    knee_mri, knee_xray, chest_xray, arthroplasty = _orders(f)
    orders, notes = read_orders(model, searchset([knee_mri, knee_xray, chest_xray, arthroplasty]) | {"type": "collection"})
    assert [o.reference for o in orders] == [_ref(knee_mri), _ref(knee_xray), _ref(arthroplasty)]
    assert all("knee_order" in o.value_sets for o in orders)
    assert orders[0].status == "draft"
    assert orders[0].date == TODAY
    assert orders[2].resource_type == "Procedure"
    assert notes == []


def test_read_orders_selections_filter(model: Model) -> None:
    f = factory()
    knee_mri, knee_xray, chest_xray, arthroplasty = _orders(f)
    bundle = searchset([knee_mri, knee_xray, chest_xray, arthroplasty])
    orders, _ = read_orders(model, bundle, [_ref(knee_xray), _ref(chest_xray)])
    assert [o.reference for o in orders] == [_ref(knee_xray)]
    assert read_orders(model, bundle, []) == ([], [])
    assert read_orders(model, bundle, ["ServiceRequest/not-drafted"]) == ([], [])


def test_read_orders_ignores_other_resource_types(model: Model) -> None:
    f = factory()
    knee_mri = _orders(f)[0]
    observation = f.observation(SNOMED, "241641004", "MRI of knee")
    condition = f.condition(SNOMED, "241641004", "MRI of knee")
    medication = {"resourceType": "MedicationRequest", "id": "m1", "status": "draft", "intent": "order", "subject": f.subject}
    bundle = searchset([observation, condition, medication, knee_mri])
    orders, notes = read_orders(model, bundle, [_ref(observation), _ref(condition), _ref(medication), _ref(knee_mri)])
    assert [o.reference for o in orders] == [_ref(knee_mri)]
    assert notes == []


def test_read_orders_body_site_reason_and_performer(model: Model) -> None:
    f = factory()
    referral = f.service_request(
        SNOMED, "308481009", "Referral to orthopedic surgeon", status="draft", body_site=("72696002", "Knee")
    )
    referral["reasonCode"] = [concept(ICD10, "M25.561")]
    referral["reasonReference"] = [{"reference": "Condition/c1"}, {"display": "no reference"}]
    referral["performerType"] = concept("urn:oid:2.16.840.1.113883.6.96", "394609007")
    (order,), _ = read_orders(model, searchset([referral]))
    assert order.value_sets == {"referral"}
    assert order.body_site_value_sets == {"knee_body_site"}
    assert order.reason_value_sets == {"knee_pain"}
    assert order.reason_references == ("Condition/c1",)
    assert order.performer_types == {("snomed", "394609007")}


def test_read_orders_invalid_order_is_a_note(model: Model) -> None:
    f = factory()
    knee_mri = _orders(f)[0]
    del knee_mri["intent"]
    orders, notes = read_orders(model, searchset([knee_mri]))
    assert orders == []
    assert len(notes) == 1 and notes[0].startswith(f"{_ref(knee_mri)} is not valid FHIR R4")


@pytest.mark.parametrize(
    "orders",
    [None, "orders", {"resourceType": "Bundle"}, {"entry": "x"}, {"entry": [None, {"resource": "x"}, {"resource": {}}]}],
    ids=["none", "string", "no-entry", "entry-string", "bad-entries"],
)
def test_read_orders_malformed_input(model: Model, orders: Any) -> None:
    assert read_orders(model, orders) == ([], [])
