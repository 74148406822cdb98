"""docs/model.md must describe the model file as it is: every signal, weight, value set and citation."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from hooks.model import MODEL_FILE

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "model.md"
# a row of the signal table: | `key` | label | kind | weight |
SIGNAL_ROW = re.compile(r"^\| `(?P<key>[a-z0-9_]+)` \| .+ \| (?:finding|alternative) \| [+-]\d+\.\d\d \|", re.MULTILINE)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    text = resources.files("hooks").joinpath("data", MODEL_FILE).read_text(encoding="utf-8")
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def test_identity_and_dates_are_stated(document: dict[str, Any], doc: str) -> None:
    for value in (document["id"], document["version"], document["released"], document["revised"]):
        assert str(value) in doc, f"docs/model.md does not mention {value!r}"


def test_every_signal_has_a_row_with_its_label_and_weight(document: dict[str, Any], doc: str) -> None:
    for key, signal in document["signals"].items():
        row = f"| `{key}` | {signal['label']} | {signal['kind']} | {float(signal['weight']):+.2f} |"
        assert row in doc, f"docs/model.md has no signal row starting {row!r}"


def test_signal_table_has_no_signal_the_model_lacks(document: dict[str, Any], doc: str) -> None:
    rows = [m["key"] for m in SIGNAL_ROW.finditer(doc)]
    assert sorted(rows) == sorted(document["signals"]), "the signal table and the model's signals differ"


def test_published_figures_are_stated(document: dict[str, Any], doc: str) -> None:
    for key, signal in document["signals"].items():
        ratio = signal.get("ratio")
        if ratio:
            figure = f"{ratio['measure']} {ratio['value']}" + (f" ({ratio['ci']})" if ratio.get("ci") else "")
            assert figure in doc, f"{key}: published figure {figure!r} missing from docs/model.md"


def test_score_range_matches_the_weights(document: dict[str, Any], doc: str) -> None:
    """The reachable range under the group rules: each group's best (strongest signal, or its cap), a
    group adding nothing beside a group that supersedes it; the lowest is every alternative."""
    best: dict[str, float] = {}
    for key, group in document["groups"].items():
        weights = [float(s["weight"]) for s in document["signals"].values() if s["group"] == key and s["weight"] > 0]
        if not weights:
            continue
        best[key] = max(weights) if group["rule"] == "strongest" else sum(weights)
        if group["rule"] == "cap":
            best[key] = min(best[key], float(group["cap"]))
    highest = sum(v for k, v in best.items() if not set(document["groups"][k].get("superseded_by", [])) & set(best))
    lowest = sum(float(s["weight"]) for s in document["signals"].values() if s["weight"] < 0)
    assert f"The highest reachable score is {highest:+.2f}" in doc
    assert f"the lowest {lowest:+.2f}" in doc


def test_every_weight_change_is_in_the_changes_table(document: dict[str, Any], doc: str) -> None:
    assert document["changelog"][0]["version"] == document["version"]
    # the weights table of the latest version that changed weights (a later one may change rules only)
    latest = next(entry for entry in document["changelog"] if entry["weights"])
    changed = {w["signal"] for w in latest["weights"]}
    assert set(document["signals"]) <= changed  # every signal of this version is accounted for
    for w in latest["weights"]:
        old = "-" if w["old"] is None else f"{float(w['old']):+.2f}"
        new = "-" if w["new"] is None else f"{float(w['new']):+.2f}"
        assert f"| `{w['signal']}` | {old} | {new} | {w['reason']} |" in doc, w["signal"]
        if w["new"] is not None:
            assert float(document["signals"][w["signal"]]["weight"]) == float(w["new"]), w["signal"]


def test_the_evaluation_table_is_what_evaluate_prints(doc: str) -> None:
    from datetime import date

    from hooks.evaluation import evaluate_profiles
    from hooks.model import load_model

    for result in evaluate_profiles(load_model(), date(2026, 11, 24)):
        band = result.assessment.band or "-"
        row = f"| `{result.profile.name}` | {result.profile.description} | {result.expected} | {band} | {result.card} |"
        assert row in doc, row
        assert result.ok, result.profile.name


def test_hti1_data_elements_match_the_model_file(document: dict[str, Any], doc: str) -> None:
    table = doc.split("Demographic and other data elements used as inputs", 1)[1].split("###", 1)[0]
    for key, element in document["source_attributes"]["data_elements"].items():
        name = {"social_determinants_of_health": "Social determinants of health"}.get(key, key.replace("_", " ").capitalize())
        (row,) = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
        assert ("**Yes**" in row) is element["used"], key


def test_band_thresholds_are_stated(document: dict[str, Any], doc: str) -> None:
    for band, threshold in document["bands"].items():
        assert f"`{band}` from {float(threshold):.1f}" in doc, f"band {band} threshold missing from docs/model.md"


def test_suppression_window_is_stated(document: dict[str, Any], doc: str) -> None:
    assert f"{document['suppression']['completed_within_days']} days" in doc


def test_every_value_set_and_code_is_listed(document: dict[str, Any], doc: str) -> None:
    for key, value_set in document["value_sets"].items():
        assert f"| `{key}` | {value_set['label']} |" in doc, f"value set {key} missing from docs/model.md"
        codes = [str(c) for field in ("icd10cm", "snomed", "loinc", "cpt") for c in value_set.get(field, [])]
        codes += [f"{c}*" for field in ("icd10cm", "snomed", "loinc", "cpt") for c in value_set.get(f"{field}_prefixes", [])]
        codes += [str(c) for cs in (value_set.get("other") or {}).values() for c in cs]
        for code in codes:
            assert code in doc, f"value set {key}: code {code} missing from docs/model.md"


def test_every_citation_is_in_the_bibliography(document: dict[str, Any], doc: str) -> None:
    bibliography = doc.split("### Bibliography", 1)[1]
    for key, citation in document["citations"].items():
        assert f"**{citation['short']}** (`{key}`)" in bibliography, f"citation {key} missing from the bibliography"
