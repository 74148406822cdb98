"""The assessment model file and its loader: identity, integrity, site configuration and the code index.

Most checks are derived from the shipped YAML itself, so a value set, code or signal added to the model
is covered without editing this file.
"""

from __future__ import annotations

import math
import re
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from hooks.assessment import assess
from hooks.fhir import read_record
from hooks.model import MODEL_FILE, CodeIndex, Coding, Model, ModelConfigError, load_model, normalize_code
from hooks.synthetic import Factory, radiculopathy_knee_pain

# -- the shipped model file, read independently of the loader ---------------------------------------

MODEL_PATH = Path(str(resources.files("hooks").joinpath("data", MODEL_FILE)))
DOCUMENT: dict[str, Any] = yaml.safe_load(MODEL_PATH.read_text(encoding="utf-8"))

FAMILIES = ("icd10cm", "snomed", "loinc", "cpt")
SYSTEMS: dict[str, list[str]] = DOCUMENT["systems"]

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10_OID = "urn:oid:2.16.840.1.113883.6.90"
SNOMED = "http://snomed.info/sct"
SNOMED_OID = "urn:oid:2.16.840.1.113883.6.96"
LOCAL = "http://hospital.example/codes"

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def _listed_codes() -> list[Any]:
    """One case per (value set, family, code, is-prefix) listed in the model file."""
    cases = []
    for vs_key, raw in DOCUMENT["value_sets"].items():
        for family in FAMILIES:
            for code in raw.get(family, []):
                cases.append(pytest.param(vs_key, family, str(code), False, id=f"{vs_key}-{family}-{code}"))
            for code in raw.get(f"{family}_prefixes", []):
                cases.append(pytest.param(vs_key, family, str(code), True, id=f"{vs_key}-{family}-prefix-{code}"))
    return cases


def _other_codes() -> list[Any]:
    return [
        pytest.param(vs_key, system, str(code), id=f"{vs_key}-{code}")
        for vs_key, raw in DOCUMENT["value_sets"].items()
        for system, codes in (raw.get("other") or {}).items()
        for code in codes
    ]


LISTED_CODES = _listed_codes()
RATIO_SIGNALS = [pytest.param(key, id=key) for key, raw in DOCUMENT["signals"].items() if raw.get("ratio")]


def _model_file(tmp_path: Path, **changes: Any) -> Path:
    """A copy of the shipped model file with top-level sections replaced."""
    document = yaml.safe_load(MODEL_PATH.read_text(encoding="utf-8"))
    document.update(changes)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


# -- identity --------------------------------------------------------------------------------------


def test_shipped_model_loads_with_identity(model: Model) -> None:
    assert model.id == DOCUMENT["id"] == "spine-origin-knee-pain"
    assert SEMVER.match(model.version), model.version
    assert HASH.match(model.hash), model.hash
    assert model.identity() == {"id": model.id, "version": model.version, "hash": model.hash}
    assert model.title


def test_model_covers_every_section_of_the_file(model: Model) -> None:
    assert set(model.value_sets) == set(DOCUMENT["value_sets"])
    assert set(model.signals) == set(DOCUMENT["signals"])
    assert {e.key for e in model.expected_inputs} == set(DOCUMENT["expected_inputs"])
    assert set(model.citations) == set(DOCUMENT["citations"])


def test_hash_is_stable_across_loads(model: Model) -> None:
    assert load_model().hash == model.hash
    assert load_model(site={}).hash == model.hash
    # a separate load from the same file builds a fresh document and must hash the same
    fresh = load_model(path=MODEL_PATH)
    assert fresh is not model
    assert fresh.hash == model.hash


def test_hash_does_not_depend_on_site_key_order() -> None:
    codes = {"strength_exam": [{"system": LOCAL, "code": "QSTR"}]}
    first = load_model(site={"codes": codes, "suppression_days": 30})
    second = load_model(site={"suppression_days": 30, "codes": codes})
    assert first.hash == second.hash


@pytest.mark.parametrize(
    "site",
    [
        pytest.param({"codes": {"strength_exam": [{"system": LOCAL, "code": "QSTR"}]}}, id="codes"),
        pytest.param({"suppression_days": 30}, id="suppression_days"),
        pytest.param({"referral": {"code": {"system": LOCAL, "code": "SPINE"}}}, id="referral"),
    ],
)
def test_hash_changes_with_site_configuration(model: Model, site: dict[str, Any]) -> None:
    configured = load_model(site=site)
    assert HASH.match(configured.hash)
    assert configured.hash != model.hash
    assert configured.id == model.id and configured.version == model.version


def test_hash_changes_when_the_file_changes(model: Model, tmp_path: Path) -> None:
    changed = load_model(path=_model_file(tmp_path, bands={"possible": 1.0, "likely": 3.0}))
    assert changed.hash != model.hash


# -- citations, sources, weights --------------------------------------------------------------------


@pytest.mark.parametrize("key", list(DOCUMENT["signals"]))
def test_every_signal_cites_a_known_source(model: Model, key: str) -> None:
    signal = model.signals[key]
    assert signal.sources, f"signal {key} has a weight but no source"
    for source in signal.sources:
        assert source in model.citations, f"signal {key}: unknown citation {source!r}"
    assert model.cite(signal.sources)  # every key resolves to a citation text
    assert signal.weight == float(DOCUMENT["signals"][key]["weight"])
    assert signal.weight != 0
    assert (signal.weight > 0) == (signal.kind == "finding")


@pytest.mark.parametrize("key", list(DOCUMENT["value_sets"]))
def test_every_value_set_source_exists(model: Model, key: str) -> None:
    for source in model.value_sets[key].sources:
        assert source in model.citations, f"value set {key}: unknown citation {source!r}"


def test_every_citation_has_text(model: Model) -> None:
    for key, text in model.citations.items():
        assert text.strip(), key
        assert model.short_citations[key].strip(), key


def test_signal_and_expected_input_references_resolve(model: Model) -> None:
    for signal in model.signals.values():
        for ref in signal.value_sets:
            assert ref in model.value_sets, (signal.key, ref)
        for ref in (*signal.requires_all, *signal.requires_any):
            assert ref in model.value_sets or ref in model.signals, (signal.key, ref)
    for expected in model.expected_inputs:
        for ref in expected.value_sets:
            assert ref in model.value_sets, (expected.key, ref)


def _rounded(value: float) -> set[float]:
    """`value` rounded to one, two or three significant figures."""
    return {float(f"{value:.1g}"), float(f"{value:.2g}"), float(f"{value:.3g}")}


@pytest.mark.parametrize("key", RATIO_SIGNALS)
def test_weight_derives_from_published_ratio(model: Model, key: str) -> None:
    """The file's header: the weight is ln(ratio), rounded, and halved for hypothesis-level evidence.

    The file does not say how far it rounds (2.0 for ln 7.0 = 1.95, 0.25 for ln 1.28 = 0.247), so the
    weight must equal the target rounded to one or two significant figures; that still catches a
    weight that was not halved, a wrong ratio, or a sign error.
    """
    signal = model.signals[key]
    assert signal.ratio is not None
    assert signal.ratio.value > 0
    target = math.log(signal.ratio.value)
    if signal.evidence == "hypothesis":
        target /= 2
    assert signal.weight in _rounded(target), (
        f"{key}: weight {signal.weight} is not ln({signal.ratio.value}){' / 2' if signal.evidence == 'hypothesis' else ''} = {target:.4f}"
    )
    assert str(signal.ratio).startswith(f"{signal.ratio.measure} {signal.ratio.value:g}")


def test_ratio_signals_are_found_in_the_file() -> None:
    # guards the parametrisation above against silently testing nothing; model 2.0 keeps a ratio only where
    # it answers the signal's own question (the two root examinations together, Suri 2011)
    assert RATIO_SIGNALS and [p.values[0] for p in RATIO_SIGNALS] == ["root_exam_pair"]


# -- bands -----------------------------------------------------------------------------------------


def test_bands_are_ordered(model: Model) -> None:
    assert set(model.bands) == {"possible", "likely"}
    assert 0 < model.bands["possible"] < model.bands["likely"]


@pytest.mark.parametrize(
    "bands",
    [{"possible": 2.5, "likely": 1.0}, {"possible": 2.0, "likely": 2.0}, {"likely": 2.0}],
    ids=["reversed", "equal", "missing"],
)
def test_unordered_bands_are_rejected(tmp_path: Path, bands: dict[str, float]) -> None:
    with pytest.raises(ModelConfigError, match="bands"):
        load_model(path=_model_file(tmp_path, bands=bands))


def test_unknown_citation_in_model_file_is_rejected(tmp_path: Path) -> None:
    signals = yaml.safe_load(MODEL_PATH.read_text(encoding="utf-8"))["signals"]
    signals["bunion"]["sources"] = ["no-such-paper"]
    with pytest.raises(ModelConfigError, match=r"signals\.bunion.*no-such-paper"):
        load_model(path=_model_file(tmp_path, signals=signals))


def test_unknown_value_set_citation_in_model_file_is_rejected(tmp_path: Path) -> None:
    value_sets = yaml.safe_load(MODEL_PATH.read_text(encoding="utf-8"))["value_sets"]
    value_sets["bunion"]["sources"] = ["no-such-code-list"]
    with pytest.raises(ModelConfigError, match=r"value_sets\.bunion.*no-such-code-list"):
        load_model(path=_model_file(tmp_path, value_sets=value_sets))


def test_model_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ModelConfigError, match="not a mapping"):
        load_model(path=path)


# -- site configuration ----------------------------------------------------------------------------


def test_site_code_is_found_by_the_index(model: Model) -> None:
    configured = load_model(site={"codes": {"strength_exam": [{"system": LOCAL, "code": "QSTR"}]}})
    assert configured.index.lookup(LOCAL, "QSTR") == {"strength_exam"}
    assert ("http://hospital.example/codes", "QSTR") in configured.index.codes_for("strength_exam")
    # the site's code is local to the configured model: the shipped model is untouched
    assert model.index.lookup(LOCAL, "QSTR") == frozenset()
    assert "other" not in load_model().document["value_sets"]["strength_exam"]
    # the shipped codes still resolve in the configured model
    assert configured.index.lookup(ICD10, "M54.16") == {"lumbar_radiculopathy"}


def test_site_code_in_a_standard_system_is_normalised() -> None:
    configured = load_model(site={"codes": {"femoral_stretch_exam": [{"system": ICD10_OID, "code": "R29.898"}]}})
    assert "femoral_stretch_exam" in configured.index.lookup(ICD10, "R29898")
    assert "femoral_stretch_exam" in configured.index.lookup(ICD10, "r29.898")


def test_site_adds_to_a_value_set_with_other_codes() -> None:
    interpretation = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    configured = load_model(site={"codes": {"positive_result": [{"system": LOCAL, "code": "YES"}]}})
    assert configured.index.lookup(LOCAL, "YES") == {"positive_result"}
    assert configured.index.lookup(interpretation, "POS") == {"positive_result"}


def test_site_overrides_referral(model: Model) -> None:
    assert model.referral.code == Coding(SNOMED, "308481009", "Referral to orthopedic surgeon")
    assert model.referral.performer_type is None
    configured = load_model(
        site={
            "referral": {
                "code": {"system": LOCAL, "code": "SPINE-REF", "display": "Referral to spine service"},
                "performer_type": {"system": LOCAL, "code": "SPINE-TEAM"},
            }
        }
    )
    assert configured.referral.code == Coding(LOCAL, "SPINE-REF", "Referral to spine service")
    assert configured.referral.performer_type == Coding(LOCAL, "SPINE-TEAM")
    assert model.referral.code.code == "308481009"  # the shipped model is untouched


def test_site_overrides_performer_type_only(model: Model) -> None:
    configured = load_model(site={"referral": {"performer_type": {"system": SNOMED, "code": "394609007"}}})
    assert configured.referral.code == model.referral.code
    assert configured.referral.performer_type == Coding(SNOMED, "394609007")


@pytest.mark.parametrize("days", [0, 30, 730])
def test_site_overrides_suppression_days(model: Model, days: int) -> None:
    configured = load_model(site={"suppression_days": days})
    assert configured.suppression["completed_within_days"] == days
    assert model.suppression["completed_within_days"] == DOCUMENT["suppression"]["completed_within_days"]


@pytest.mark.parametrize(
    ("site", "named"),
    [
        pytest.param({"bogus": 1}, "bogus", id="unknown-top-level-key"),
        pytest.param({"codes": {"strength_exam": []}, "colour": "blue"}, "colour", id="unknown-key-beside-known"),
        pytest.param({"codes": {"no_such_set": [{"system": LOCAL, "code": "X"}]}}, "codes.no_such_set", id="unknown-value-set"),
        pytest.param({"codes": {"strength_exam": [{"system": LOCAL}]}}, r"codes\.strength_exam\[0\]", id="coding-without-code"),
        pytest.param(
            {"codes": {"strength_exam": [{"system": LOCAL, "code": "A"}, {"code": "B"}]}},
            r"codes\.strength_exam\[1\]",
            id="coding-without-system",
        ),
        pytest.param(
            {"codes": {"strength_exam": [{"system": LOCAL, "code": ""}]}}, r"codes\.strength_exam\[0\]", id="empty-code"
        ),
        pytest.param(
            {"codes": {"strength_exam": {"system": LOCAL, "code": "A"}}}, "codes.strength_exam", id="codings-not-a-list"
        ),
        pytest.param({"codes": ["strength_exam"]}, "codes", id="codes-not-a-mapping"),
        pytest.param({"suppression_days": -1}, "suppression_days", id="negative-suppression-days"),
        pytest.param({"suppression_days": "30"}, "suppression_days", id="suppression-days-string"),
        pytest.param({"suppression_days": True}, "suppression_days", id="suppression-days-bool"),
        pytest.param({"suppression_days": 1.5}, "suppression_days", id="suppression-days-fraction"),
        pytest.param({"referral": {"code": {"system": LOCAL}}}, "referral.code", id="referral-code-without-code"),
        pytest.param({"referral": {"performer_type": {"code": "X"}}}, "referral.performer_type", id="performer-without-system"),
        pytest.param({"referral": {"colour": "blue"}}, "referral", id="referral-unknown-key"),
        pytest.param({"referral": "SPINE"}, "referral", id="referral-not-a-mapping"),
    ],
)
def test_bad_site_configuration_names_the_key(site: dict[str, Any], named: str) -> None:
    with pytest.raises(ModelConfigError, match=named) as raised:
        load_model(site=site)
    assert "site configuration" in str(raised.value)


def test_site_configuration_must_be_a_mapping() -> None:
    with pytest.raises(ModelConfigError, match="site configuration"):
        load_model(site=[{"codes": {}}])  # type: ignore[arg-type]


def test_model_config_error_is_a_value_error() -> None:
    assert issubclass(ModelConfigError, ValueError)


# -- code index ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code", "value_set"),
    [
        pytest.param(ICD10, "M54.16", "lumbar_radiculopathy", id="icd-dotted"),
        pytest.param(ICD10, "M5416", "lumbar_radiculopathy", id="icd-dotless"),
        pytest.param(ICD10, "m54.16", "lumbar_radiculopathy", id="icd-lowercase"),
        pytest.param(ICD10, "m5416", "lumbar_radiculopathy", id="icd-lowercase-dotless"),
        pytest.param(ICD10, " M54.16 ", "lumbar_radiculopathy", id="icd-padded"),
        pytest.param(ICD10_OID, "M54.16", "lumbar_radiculopathy", id="icd-oid"),
        pytest.param(ICD10, "M17.11", "knee_oa", id="prefix-M17"),
        pytest.param(ICD10, "M17", "knee_oa", id="prefix-itself"),
        pytest.param(ICD10, "m1711", "knee_oa", id="prefix-lowercase-dotless"),
        pytest.param(ICD10, "S83.511A", "knee_injury", id="prefix-S83-with-extension"),
        pytest.param(ICD10_OID, "S83.511A", "knee_injury", id="prefix-oid"),
        pytest.param(ICD10, "Z96.651", "knee_arthroplasty", id="prefix-with-dot"),
        pytest.param(ICD10, "M51.369", "lumbar_degeneration", id="prefix-M51.36"),
        pytest.param(ICD10, "G57.21", "peripheral_nerve_lesion", id="prefix-G57.2"),
        pytest.param(SNOMED, "128196005", "lumbar_radiculopathy", id="snomed"),
        pytest.param(SNOMED_OID, "128196005", "lumbar_radiculopathy", id="snomed-oid"),
        pytest.param("http://loinc.org", "72514-3", "pain_severity", id="loinc"),
        pytest.param("urn:oid:2.16.840.1.113883.6.1", "72514-3", "pain_severity", id="loinc-oid"),
        pytest.param("http://www.ama-assn.org/go/cpt", "72148", "lumbar_mri", id="cpt"),
        pytest.param("urn:oid:2.16.840.1.113883.6.12", "72148", "lumbar_mri", id="cpt-oid"),
    ],
)
def test_index_finds(model: Model, system: str, code: str, value_set: str) -> None:
    assert value_set in model.index.lookup(system, code)


@pytest.mark.parametrize(
    ("system", "code"),
    [
        pytest.param("http://example.org/unknown", "M54.16", id="unknown-system"),
        pytest.param("http://example.org/unknown", "128196005", id="unknown-system-snomed-code"),
        pytest.param(SNOMED, "M54.16", id="icd-code-in-snomed"),
        pytest.param(ICD10, "128196005", id="snomed-code-in-icd"),
        pytest.param(SNOMED, "1281960", id="snomed-has-no-prefixes"),
        pytest.param(SNOMED, "1281960051", id="snomed-longer"),
        pytest.param(ICD10, "M1", id="shorter-than-prefix"),
        pytest.param(ICD10, "M18.11", id="neighbour-of-prefix"),
        pytest.param(ICD10, "S79.9", id="below-prefix-range"),
        pytest.param(ICD10, "M54.1", id="parent-of-exact-code"),
        pytest.param(ICD10, "M54.161", id="child-of-exact-code"),
        pytest.param(ICD10, "", id="empty-code"),
        pytest.param(None, "M54.16", id="no-system"),
        pytest.param(ICD10, None, id="no-code"),
        pytest.param(ICD10, 5416, id="code-not-a-string"),
        pytest.param(["http://hl7.org/fhir/sid/icd-10-cm"], "M54.16", id="system-a-list"),
        pytest.param(ICD10, {"code": "M54.16"}, id="code-a-mapping"),
    ],
)
def test_index_does_not_find(model: Model, system: Any, code: Any) -> None:
    assert model.index.lookup(system, code) == frozenset()


def test_index_lookup_is_repeatable(model: Model) -> None:
    first = model.index.lookup(ICD10, "M17.11")
    assert model.index.lookup(ICD10, "M17.11") == first == {"knee_oa"}
    assert model.index.lookup(ICD10, "M1711") == first


def test_codes_in_several_value_sets_return_all_of_them(model: Model) -> None:
    assert model.index.lookup(SNOMED, "308482002") == {"spine_referral", "referral"}
    assert model.index.lookup(SNOMED, "609588000") == {"knee_arthroplasty", "knee_order"}


def test_standalone_index_prefixes_and_families() -> None:
    index = CodeIndex({"urn:a": "fam", "urn:b": "fam"})
    index.add("exact", "urn:a", "AB1")
    index.add("short", "urn:a", "A", prefix=True)
    index.add("long", "urn:b", "AB", prefix=True)
    assert index.lookup("urn:b", "AB1") == {"exact", "short", "long"}
    assert index.lookup("urn:a", "AC") == {"short"}
    assert index.lookup("urn:c", "AB1") == frozenset()
    assert index.family("urn:c") == "urn:c"
    assert index.codes_for("exact") == [("fam", "AB1")]


def test_normalize_code_touches_only_icd() -> None:
    assert normalize_code("icd10cm", " m54.16 ") == "M5416"
    assert normalize_code("loinc", "72514-3") == "72514-3"
    assert normalize_code("snomed", " 128196005") == "128196005"


# -- every code listed in the model resolves (parametrised over the YAML) -----------------------------


def test_model_lists_codes_in_both_icd_and_snomed() -> None:
    both = [
        k
        for k, raw in DOCUMENT["value_sets"].items()
        if (raw.get("icd10cm") or raw.get("icd10cm_prefixes")) and raw.get("snomed")
    ]
    assert len(both) >= 10  # the parametrisation below really covers the dual-coded value sets
    assert len(LISTED_CODES) >= 100


@pytest.mark.parametrize(("value_set", "family", "code", "prefix"), LISTED_CODES)
def test_every_listed_code_resolves(model: Model, value_set: str, family: str, code: str, prefix: bool) -> None:
    # every URI the model names for the family (canonical and OID alias)
    for system in SYSTEMS[family]:
        assert value_set in model.index.lookup(system, code), f"{system}|{code}"
        if prefix:
            assert value_set in model.index.lookup(system, code + "9"), f"{system}|{code}9 (under prefix {code})"
    if family == "icd10cm":
        dotless = code.replace(".", "")
        assert value_set in model.index.lookup(SYSTEMS[family][0], dotless)
        assert value_set in model.index.lookup(SYSTEMS[family][0], code.lower())
        if "." not in code and len(code) > 3 and not prefix:
            dotted = f"{code[:3]}.{code[3:]}"
            assert value_set in model.index.lookup(SYSTEMS[family][0], dotted)
    # ICD-10-CM and SNOMED CT are kept apart: a code of one is never found under the other
    other = {"icd10cm": "snomed", "snomed": "icd10cm"}.get(family)
    if other:
        assert model.index.lookup(SYSTEMS[other][0], code) == frozenset()


@pytest.mark.parametrize(("value_set", "system", "code"), _other_codes())
def test_every_other_system_code_resolves(model: Model, value_set: str, system: str, code: str) -> None:
    assert value_set in model.index.lookup(system, code)


@pytest.mark.parametrize("value_set", [k for k, raw in DOCUMENT["value_sets"].items() if "laterality" in raw])
def test_laterality_tables_name_listed_codes(model: Model, value_set: str) -> None:
    table = DOCUMENT["value_sets"][value_set]["laterality"]
    assert set(model.value_sets[value_set].laterality.values()) <= {"right", "left", "bilateral"}
    for code, side in table.items():
        assert value_set in model.index.lookup(ICD10, str(code))
        assert model.value_sets[value_set].laterality[normalize_code("icd10cm", str(code))] == side


def test_the_sites_own_referral_once_ordered_silences_the_cards(today: date) -> None:
    """A referral with the site's configured code is a spine referral, without listing it again."""
    site = {"referral": {"code": {"system": LOCAL, "code": "SPINE-EVAL", "display": "Lumbar spine evaluation"}}}
    configured = load_model(site=site)
    factory = Factory(seed=3, today=today)
    resources = [*radiculopathy_knee_pain(factory), factory.service_request(LOCAL, "SPINE-EVAL", "Lumbar spine evaluation")]
    assessment = assess(configured, read_record(configured, resources), today)
    assert assessment.suppressed and not assessment.actionable
    assert [s.reason for s in assessment.suppressions] == ["a spine referral is already active"]
    # the same record under the shipped model, which does not know the local code, is carded
    assert assess(load_model(), read_record(load_model(), resources), today).actionable
