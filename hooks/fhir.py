"""Reading FHIR R4 JSON into typed evidence.

Prefetch values arrive as a resource, a searchset Bundle (possibly several pages), ``null`` or an
OperationOutcome; population scoring hands over single NDJSON lines. Most resources in a real record
cannot matter to the assessment, so each one is first matched by code against the model's index on
the raw JSON, and only the resources that survive the match and the status rules pay for a
``fhir.resources`` R4B validation. An invalid relevant resource becomes a data-quality note.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import import_module
from typing import Any

import orjson
from pydantic import ValidationError

from hooks.model import Coding, Model

# the resource types whose codes can drive a decision, each with the prefetch key the services read it
# under: the one list the prefetch templates, the Bulk Data export and the readers use. Everything else
# is counted and skipped
RECORD_TYPES: dict[str, str] = {
    "Patient": "patient",
    "Condition": "conditions",
    "Observation": "observations",
    "Procedure": "procedures",
    "ServiceRequest": "serviceRequests",
}
RELEVANT_TYPES = frozenset(RECORD_TYPES)

_MISSING_STATUS = object()

# the identifier the service writes into the referral a card drafts, so that once signed it is known
# as the card's own suggestion whatever its code or reasons
SUGGESTION_IDENTIFIER_SYSTEM = "urn:spine-cds:suggestion"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One resource that falls in one value set of the model."""

    value_set: str
    reference: str
    resource_type: str
    coding: Coding
    date: date | None
    status: str | None
    verification: str | None = None
    laterality: str | None = None
    value: float | None = None
    # False for an examination that was recorded but normal; True for every diagnosis
    positive: bool = True
    # the resource's own words for the code (`code.text`), when it has them
    text: str | None = None

    @property
    def name(self) -> str:
        """What the record calls it: the coding's display, else the code's text, else the code."""
        return self.coding.display or self.text or self.coding.code


@dataclass(frozen=True, slots=True)
class Intervention:
    """A ServiceRequest or Procedure, read for suppression and for order hooks."""

    reference: str
    resource_type: str
    coding: Coding
    value_sets: frozenset[str]
    status: str | None
    date: date | None
    performer_types: frozenset[tuple[str, str]] = frozenset()
    reason_value_sets: frozenset[str] = frozenset()
    reason_references: tuple[str, ...] = ()
    body_site_value_sets: frozenset[str] = frozenset()
    # reasonCode text and displays and reasonReference displays, lower-cased
    reason_texts: tuple[str, ...] = ()
    # drafted by this service's card (its identifier system is SUGGESTION_IDENTIFIER_SYSTEM)
    own_suggestion: bool = False


@dataclass
class PatientRecord:
    patient_id: str | None = None
    patient_reference: str | None = None
    birth_date: date | None = None
    # Patient.deceased[x]: true, or a date and time of death
    deceased: bool = False
    evidence: dict[str, list[Evidence]] = field(default_factory=dict)
    interventions: list[Intervention] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resource_count: int = 0
    validated_count: int = 0

    def of(self, value_set: str) -> list[Evidence]:
        return self.evidence.get(value_set, [])


def fhir_date(value: Any) -> date | None:
    """The calendar date of a FHIR date, dateTime or instant (partial dates take the first day)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return date(year, month, day)
    except ValueError:
        return None


@cache
def _r4b_class(resource_type: str) -> Any:
    module = import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def validation_problem(resource: Mapping[str, Any]) -> str | None:
    """None when the resource is valid R4 (R4B models); otherwise a short reason without its values."""
    resource_type = resource.get("resourceType")
    try:
        _r4b_class(str(resource_type)).model_validate(resource)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "resource"
        return f"{where}: {first['msg']}"
    except (ImportError, AttributeError):
        return f"unknown resource type {resource_type!r}"
    except (TypeError, ValueError) as exc:  # fhir.resources raises these for some malformed shapes
        return type(exc).__name__
    # fhir.resources accepts a JSON number in a date field (as Unix time); FHIR JSON only allows a string
    for path in _DATE_PATHS.get(str(resource_type), ()):
        value = _path_value(resource, path)
        if value is not None and not isinstance(value, str):
            return f"{path}: a date must be a string"
    return None


# where a resource carries the codes the model's value sets are matched against
_CODED_FIELDS: dict[str, tuple[str, ...]] = {"Observation": ("code", "valueCodeableConcept")}


def _codings(concept: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(concept, dict):
        codings = concept.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, dict):
                    yield coding


def _status_code(concept: Any) -> str | object | None:
    """The code of a status CodeableConcept, or _MISSING_STATUS when there is none."""
    for coding in _codings(concept):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return _MISSING_STATUS


def _reference(resource: Mapping[str, Any], full_url: str | None) -> str:
    resource_id = resource.get("id")
    if isinstance(resource_id, str) and resource_id:
        return f"{resource['resourceType']}/{resource_id}"
    return full_url or f"{resource['resourceType']}/(no id)"


def _path_value(resource: Mapping[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def patient_id_of(target: str) -> str | None:
    """The id a Patient reference names (relative, absolute or versioned); None when it names none."""
    head, sep, tail = target.rpartition("Patient/")
    if not sep or (head and not head.endswith("/")):
        return None
    return tail.split("/", 1)[0] or None


def patient_of_resource(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource belongs to: a Patient's own id, else the patient its `subject` names, else its
    `patient` (Immunization, AllergyIntolerance, ...). worker/population.py reads the same from raw lines."""
    if resource.get("resourceType") == "Patient":
        resource_id = resource.get("id")
        return resource_id if isinstance(resource_id, str) else None
    for key in ("subject", "patient"):
        ref = resource.get(key)
        target = ref.get("reference") if isinstance(ref, Mapping) else None
        found = patient_id_of(target) if isinstance(target, str) else None
        if found:
            return found
    return None


def _first_date(resource: Mapping[str, Any], *paths: str) -> date | None:
    for path in paths:
        found = fhir_date(_path_value(resource, path))
        if found:
            return found
    return None


_DATE_PATHS: dict[str, tuple[str, ...]] = {
    "Patient": ("birthDate",),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod.end", "performedPeriod.start"),
    "ServiceRequest": ("occurrenceDateTime", "occurrencePeriod.start", "authoredOn"),
}


class RecordReader:
    """Accumulates resources for one patient into a PatientRecord."""

    def __init__(self, model: Model, patient_id: str | None = None) -> None:
        self.model = model
        self.index = model.index
        self.record = PatientRecord(patient_id=patient_id)
        self._seen: set[str] = set()
        rules = model.condition_rules
        self._ignored_verification = frozenset(rules["ignored_verification_statuses"])
        self._counted_observation = frozenset(rules["counted_observation_statuses"])

    # -- input shapes ---------------------------------------------------------------------------

    def add_prefetch_value(self, value: Any, key: str = "prefetch") -> None:
        """A prefetch value: a resource, a Bundle, a list of Bundle pages, null or an OperationOutcome."""
        if value is None:
            return
        if isinstance(value, list):
            for page in value:
                self.add_prefetch_value(page, key)
            return
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            self.record.notes.append(f"Prefetch '{key}' is not a FHIR resource and was ignored.")
            return
        if value["resourceType"] == "Bundle":
            entries = value.get("entry")
            for entry in entries if isinstance(entries, list) else ():
                if not isinstance(entry, dict):
                    continue
                resource = entry.get("resource")
                search = entry.get("search")
                mode = search.get("mode") if isinstance(search, dict) else None
                if isinstance(resource, dict) and (mode == "outcome" or resource.get("resourceType") == "OperationOutcome"):
                    self._outcome(resource, key)
                elif isinstance(resource, dict):
                    full_url = entry.get("fullUrl")
                    self.add(resource, full_url if isinstance(full_url, str) else None)
            return
        if value["resourceType"] == "OperationOutcome":
            self._outcome(value, key)
            return
        self.add(value)

    def add_ndjson_line(self, line: bytes | str) -> None:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.record.notes.append("An NDJSON line is not valid JSON and was ignored.")
            return
        if isinstance(resource, dict):
            self.add(resource)
        else:
            self.record.notes.append("An NDJSON line is not a FHIR resource and was ignored.")

    def _outcome(self, outcome: Mapping[str, Any], key: str) -> None:
        issues = outcome.get("issue")
        parts = []
        for issue in issues if isinstance(issues, list) else ():
            if isinstance(issue, dict):
                parts.append(f"{issue.get('severity', '?')}/{issue.get('code', '?')}")
        # diagnostics text is left out: servers sometimes echo identifiers in it
        self.record.notes.append(f"The FHIR server returned an OperationOutcome for '{key}' ({', '.join(parts) or 'no issues'}).")

    # -- one resource ----------------------------------------------------------------------------

    def add(self, resource: Mapping[str, Any], full_url: str | None = None) -> None:
        record = self.record
        record.resource_count += 1
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or resource_type not in RELEVANT_TYPES:
            return
        # the code match comes first: it is the cheapest way to drop the many resources that cannot matter
        matches = self.match(resource, resource_type) if resource_type != "Patient" else []
        if not matches and resource_type != "Patient":
            return
        reference = _reference(resource, full_url)
        if reference in self._seen:
            return
        if not reference.endswith("/(no id)"):  # resources without id or fullUrl cannot be told apart
            self._seen.add(reference)
        if resource_type == "Patient":
            self._patient(resource, reference)
            return
        if not self._same_patient(resource, reference):
            return
        read = getattr(self, f"_{resource_type.lower()}")
        read(resource, reference, matches)

    def _same_patient(self, resource: Mapping[str, Any], reference: str) -> bool:
        subject = resource.get("subject")
        target = subject.get("reference") if isinstance(subject, dict) else None
        patient_id = self.record.patient_id
        named = patient_id_of(target) if isinstance(target, str) else None
        if patient_id and named is not None and named != patient_id:
            self.record.notes.append(f"{reference} belongs to another patient and was ignored.")
            return False
        return True

    def match(self, resource: Mapping[str, Any], resource_type: str) -> list[tuple[str, Coding]]:
        # runs for every resource of a relevant type, most of which match nothing: kept flat on purpose
        lookup = self.index.lookup
        found: list[tuple[str, Coding]] = []
        for coded in _CODED_FIELDS.get(resource_type, ("code",)):
            concept = resource.get(coded)
            codings = concept.get("coding") if isinstance(concept, dict) else None
            if not isinstance(codings, list):
                continue
            for coding in codings:
                if not isinstance(coding, dict):
                    continue
                system, code = coding.get("system"), coding.get("code")
                for value_set in lookup(system, code):
                    display = coding.get("display")
                    found.append((value_set, Coding(str(system), str(code), display if isinstance(display, str) else None)))
        return found

    def validate(self, resource: Mapping[str, Any], reference: str) -> bool:
        self.record.validated_count += 1
        problem = validation_problem(resource)
        if problem:
            self.record.notes.append(f"{reference} is not valid FHIR R4 ({problem}) and was left out.")
            return False
        return True

    def _patient(self, resource: Mapping[str, Any], reference: str) -> None:
        resource_id = resource.get("id")
        if self.record.patient_id and isinstance(resource_id, str) and resource_id != self.record.patient_id:
            self.record.notes.append(f"{reference} belongs to another patient and was ignored.")
            return
        if self.record.patient_reference is not None:
            return
        if not self.validate(resource, reference):
            return
        if self.record.patient_id is None and isinstance(resource_id, str):
            self.record.patient_id = resource_id
        self.record.patient_reference = reference
        self.record.birth_date = fhir_date(resource.get("birthDate"))
        self.record.deceased = resource.get("deceasedBoolean") is True or isinstance(resource.get("deceasedDateTime"), str)
        if self.record.birth_date is None:
            self.record.notes.append("The patient has no birth date, so age is unknown.")

    def _laterality(self, resource: Mapping[str, Any], value_set: str, coding: Coding) -> str | None:
        sites = resource.get("bodySite")
        for site in sites if isinstance(sites, list) else ():
            for site_coding in _codings(site):
                sets = self.index.lookup(site_coding.get("system"), site_coding.get("code"))
                for side in ("right", "left", "bilateral"):
                    if f"laterality_{side}" in sets:
                        return side
            text = site.get("text") if isinstance(site, dict) else None
            if isinstance(text, str):
                lowered = text.lower()
                if ("left" in lowered and "right" in lowered) or "both" in lowered or "bilateral" in lowered:
                    return "bilateral"
                if "left" in lowered:
                    return "left"
                if "right" in lowered:
                    return "right"
        if self.index.family(coding.system) == "icd10cm":
            return self.model.value_sets[value_set].laterality.get(coding.code.replace(".", "").upper())
        return None

    def _add_evidence(self, evidence: Evidence) -> None:
        self.record.evidence.setdefault(evidence.value_set, []).append(evidence)

    def _condition(self, resource: Mapping[str, Any], reference: str, matches: list[tuple[str, Coding]]) -> None:
        verification = _status_code(resource.get("verificationStatus"))
        if verification in self._ignored_verification:
            return
        clinical = _status_code(resource.get("clinicalStatus"))
        if not self.validate(resource, reference):
            return
        if clinical is _MISSING_STATUS:
            self.record.notes.append(f"{reference} has no clinical status; it was read as active.")
            clinical = "active"
        when = _first_date(resource, *_DATE_PATHS["Condition"])
        text = _code_text(resource)
        for value_set, coding in matches:
            self._add_evidence(
                Evidence(
                    value_set=value_set,
                    reference=reference,
                    resource_type="Condition",
                    coding=coding,
                    date=when,
                    status=str(clinical),
                    verification=None if verification is _MISSING_STATUS else str(verification),
                    laterality=self._laterality(resource, value_set, coding),
                    text=text,
                )
            )

    def _observation(self, resource: Mapping[str, Any], reference: str, matches: list[tuple[str, Coding]]) -> None:
        status = resource.get("status")
        if not isinstance(status, str) or status not in self._counted_observation:
            return
        if not self.validate(resource, reference):
            return
        when = _first_date(resource, *_DATE_PATHS["Observation"])
        value = _numeric_value(resource)
        text = _code_text(resource)
        for value_set, coding in matches:
            rule = self.model.value_sets[value_set].positive_when
            positive = True
            if rule == "below_normal_grade":
                positive = value is not None and value < self.model.strength_grade_normal
            elif rule == "positive":
                positive = resource.get("valueBoolean") is True or self._result_in(resource, "positive_result")
            elif rule == "reduced":
                positive = self._result_in(resource, "reduced_result")
            self._add_evidence(
                Evidence(
                    value_set=value_set,
                    reference=reference,
                    resource_type="Observation",
                    coding=coding,
                    date=when,
                    status=str(status),
                    laterality=self._laterality(resource, value_set, coding),
                    value=value,
                    positive=positive,
                    text=text,
                )
            )

    def _result_in(self, resource: Mapping[str, Any], value_set: str) -> bool:
        """Whether the value or an interpretation of an examination is coded in `value_set`."""
        concepts = [resource.get("valueCodeableConcept")]
        interpretations = resource.get("interpretation")
        if isinstance(interpretations, list):
            concepts.extend(interpretations)
        return any(
            value_set in self.index.lookup(c.get("system"), c.get("code")) for concept in concepts for c in _codings(concept)
        )

    def _procedure(self, resource: Mapping[str, Any], reference: str, matches: list[tuple[str, Coding]]) -> None:
        status = resource.get("status")
        if status == "entered-in-error" or not self.validate(resource, reference):
            return
        when = _first_date(resource, *_DATE_PATHS["Procedure"])
        for value_set, coding in matches:
            self._add_evidence(
                Evidence(
                    value_set,
                    reference,
                    "Procedure",
                    coding,
                    when,
                    str(status),
                    laterality=self._laterality(resource, value_set, coding),
                )
            )
        self.record.interventions.append(read_intervention(self.model, resource, reference, matches, when))

    def _servicerequest(self, resource: Mapping[str, Any], reference: str, matches: list[tuple[str, Coding]]) -> None:
        if resource.get("status") == "entered-in-error" or not self.validate(resource, reference):
            return
        when = _first_date(resource, *_DATE_PATHS["ServiceRequest"])
        self.record.interventions.append(read_intervention(self.model, resource, reference, matches, when))


def _code_text(resource: Mapping[str, Any]) -> str | None:
    concept = resource.get("code")
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) and text.strip() else None


def _reason_texts(resource: Mapping[str, Any]) -> tuple[str, ...]:
    texts: list[Any] = []
    codes, references = resource.get("reasonCode"), resource.get("reasonReference")
    for concept in codes if isinstance(codes, list) else ():
        if not isinstance(concept, dict):
            continue
        texts.append(concept.get("text"))
        texts.extend(c.get("display") for c in _codings(concept))
    for reason in references if isinstance(references, list) else ():
        if isinstance(reason, dict):
            texts.append(reason.get("display"))
    return tuple(t.lower() for t in texts if isinstance(t, str) and t.strip())


def _is_own_suggestion(resource: Mapping[str, Any]) -> bool:
    identifiers = resource.get("identifier")
    return any(
        isinstance(i, dict) and i.get("system") == SUGGESTION_IDENTIFIER_SYSTEM
        for i in (identifiers if isinstance(identifiers, list) else ())
    )


def _numeric_value(resource: Mapping[str, Any]) -> float | None:
    quantity = resource.get("valueQuantity")
    raw = quantity.get("value") if isinstance(quantity, dict) else resource.get("valueInteger")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    return None


def _concept_value_sets(model: Model, concepts: Any) -> frozenset[str]:
    found: set[str] = set()
    for concept in concepts if isinstance(concepts, list) else ():
        for coding in _codings(concept):
            found |= model.index.lookup(coding.get("system"), coding.get("code"))
    return frozenset(found)


def read_intervention(
    model: Model, resource: Mapping[str, Any], reference: str, matches: list[tuple[str, Coding]], when: date | None
) -> Intervention:
    performer_types = frozenset(
        (model.index.family(str(c.get("system"))), str(c.get("code"))) for c in _codings(resource.get("performerType"))
    )
    reasons = resource.get("reasonReference")
    reason_refs = tuple(
        r["reference"]
        for r in (reasons if isinstance(reasons, list) else ())
        if isinstance(r, dict) and isinstance(r.get("reference"), str)
    )
    status = resource.get("status")
    return Intervention(
        reference=reference,
        resource_type=str(resource["resourceType"]),
        coding=matches[0][1],
        value_sets=frozenset(vs for vs, _ in matches),
        status=status if isinstance(status, str) else None,
        date=when,
        performer_types=performer_types,
        reason_value_sets=_concept_value_sets(model, resource.get("reasonCode")),
        reason_references=reason_refs,
        body_site_value_sets=_concept_value_sets(model, resource.get("bodySite")),
        reason_texts=_reason_texts(resource),
        own_suggestion=resource.get("resourceType") == "ServiceRequest" and _is_own_suggestion(resource),
    )


def read_orders(model: Model, orders: Any, selections: Iterable[str] | None = None) -> tuple[list[Intervention], list[str]]:
    """The drafted orders of an order-select or order-sign context, limited to `selections` if given."""
    wanted = set(selections) if selections is not None else None
    reader = RecordReader(model)
    interventions: list[Intervention] = []
    entries = orders.get("entry") if isinstance(orders, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        reference = _reference(resource, None)
        if wanted is not None and reference not in wanted:
            continue
        if resource["resourceType"] not in ("ServiceRequest", "Procedure"):
            continue
        matches = reader.match(resource, resource["resourceType"])
        if not matches or not reader.validate(resource, reference):
            continue
        when = _first_date(resource, *_DATE_PATHS[resource["resourceType"]])
        interventions.append(read_intervention(model, resource, reference, matches, when))
    return interventions, reader.record.notes


def read_record(
    model: Model,
    resources: Iterable[Mapping[str, Any]] = (),
    *,
    prefetch: Mapping[str, Any] | None = None,
    patient_id: str | None = None,
) -> PatientRecord:
    """A patient's record from prefetch values and/or loose resources."""
    reader = RecordReader(model, patient_id)
    for key, value in (prefetch or {}).items():
        reader.add_prefetch_value(value, key)
    for resource in resources:
        reader.add_prefetch_value(resource)
    return reader.record
