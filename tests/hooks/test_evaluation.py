"""Holding the model to its intent: synthetic profiles, the evaluate command, the public records."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cds_service.cli as cli
from cds_service.cli import evaluate as evaluate_command
from hooks.assessment import Assessment
from hooks.evaluation import DataRun, ProfileResult, evaluate_data, evaluate_profiles, outcome
from hooks.model import Model
from hooks.synthetic import PROFILES, PROFILES_BY_NAME, Factory, Profile
from tests.hooks.conftest import assess_resources

SEEDS = (0, 1, 7, 2026)
SPINAL_SIGNALS = frozenset(
    {
        "low_back_pain",
        "lumbar_radiculopathy",
        "lumbar_stenosis",
        "lumbar_degeneration",
        "sciatica",
        "lumbar_disc_displacement",
        "l3_l4_picture",
        "thigh_with_back_problem",
        "root_exam",
        "root_exam_pair",
    }
)
OUTCOMES = {"ineligible", "suppressed", "red-flag", "unlikely", "possible", "likely"}


@pytest.fixture(scope="module")
def profile_results(model: Model, today: date) -> dict[tuple[str, int], ProfileResult]:
    return {(r.profile.name, seed): r for seed in SEEDS for r in evaluate_profiles(model, today, seed=seed)}


@pytest.fixture(scope="module")
def data_run(model: Model, today: date, shared_data: Path) -> DataRun:
    return evaluate_data(model, shared_data, today)


# -- synthetic profiles ----------------------------------------------------------------------------


def test_profiles_are_named_uniquely_and_expect_known_outcomes() -> None:
    assert len(PROFILES_BY_NAME) == len(PROFILES)
    assert {p.expected for p in PROFILES} == OUTCOMES


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_gives_intended_outcome(profile_results: dict[tuple[str, int], ProfileResult], profile: Profile) -> None:
    result = profile_results[(profile.name, 0)]
    assert result.expected == profile.expected
    assert result.outcome == profile.expected, result.assessment.summary()
    assert result.ok


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_outcome_same_for_every_seed(profile_results: dict[tuple[str, int], ProfileResult], profile: Profile) -> None:
    results = [profile_results[(profile.name, seed)] for seed in SEEDS]
    assert {r.outcome for r in results} == {profile.expected}
    assert len({r.assessment.score for r in results}) == 1
    assert len({tuple(c.signal.key for c in r.assessment.contributions) for r in results}) == 1


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_direct_assessment_matches(model: Model, today: date, profile: Profile) -> None:
    a = assess_resources(model, profile.build(Factory(3, today)), today)
    assert outcome(a) == profile.expected


def test_outcome_precedence(model: Model, today: date) -> None:
    """Ineligibility wins over suppression, suppression over the band."""
    a = assess_resources(model, PROFILES_BY_NAME["already-referred"].build(Factory(0, today)), today)
    assert a.band == "likely" and a.suppressed
    assert outcome(a) == "suppressed"
    ineligible = replace(a, eligible=False, ineligible_reason="test", band=None)
    assert outcome(ineligible) == "ineligible"


# -- the evaluate command --------------------------------------------------------------------------


def test_cli_evaluate_prints_every_profile() -> None:
    result = CliRunner().invoke(cli.main, ["evaluate", "--today", "2026-11-24"])
    assert result.exit_code == 0, result.output
    for profile in PROFILES:
        assert profile.name in result.output
    assert "differs" not in result.output
    assert "as of 2026-11-24" in result.output
    assert "Outcomes:" not in result.output
    for line in result.output.splitlines()[3:]:
        if line.strip():
            assert line.split()[1] == line.split()[2], line  # intended == outcome on every profile row


@pytest.mark.parametrize(
    ("name", "card"),
    [
        ("radiculopathy-knee-pain", "warning: referral offered"),
        ("elderly-stenosis", "info: examine first, no referral"),
        ("cauda-equina", "warning: red flag, no referral"),
        ("co-occurrence-only", "none"),
        ("post-spine-surgery", "none"),
    ],
)
def test_each_profile_names_the_card_it_gives(
    profile_results: dict[tuple[str, int], ProfileResult], name: str, card: str
) -> None:
    assert profile_results[(name, 0)].card == card


def test_every_behaviour_has_a_profile() -> None:
    """The model's rules each have a profile that would fail if the rule broke."""
    names = set(PROFILES_BY_NAME)
    assert {
        "cauda-equina",
        "septic-knee",
        "co-occurrence-only",
        "post-spine-surgery",
        "deceased",
        "side-mismatch",
        "l3-l4-knee-oa",
        "differential-diagnoses",
        "double-coded-episode",
        "referral-reason-text",
        "own-referral-signed",
        "femoral-nerve-lesion",
        "healed-ankle-fracture",
    } <= names


def test_cli_evaluate_fails_when_a_profile_differs(monkeypatch: pytest.MonkeyPatch, model: Model, today: date) -> None:
    def wrong(*args: Any, **kwargs: Any) -> list[ProfileResult]:
        results = evaluate_profiles(*args, **kwargs)
        first = results[0]
        wrong_outcome = "unlikely" if first.expected != "unlikely" else "likely"
        return [replace(first, outcome=wrong_outcome), *results[1:]]

    monkeypatch.setattr(evaluate_command, "evaluate_profiles", wrong)
    result = CliRunner().invoke(cli.main, ["evaluate", "--today", "2026-11-24"])
    assert result.exit_code == 1
    assert "<-- differs" in result.output
    assert "1 profile(s) differ" in result.output


@pytest.mark.shared_data
def test_cli_evaluate_with_data(shared_data: Path) -> None:
    result = CliRunner().invoke(cli.main, ["evaluate", "--today", "2026-11-24", "--data", str(shared_data)])
    assert result.exit_code == 0, result.output
    assert "Outcomes:" in result.output
    assert f"17 patients under {shared_data}" in result.output


# -- the public records ----------------------------------------------------------------------------


@pytest.mark.shared_data
class TestPublicData:
    def test_every_patient_assessed(self, data_run: DataRun) -> None:
        labels = [label for label, _ in data_run.rows]
        print("\nOutcome distribution over ../shared/data:", dict(sorted(data_run.distribution().items())))
        for label, a in data_run.rows:
            print(f"  {label:60} {outcome(a):11} {a.score:+.2f} {[c.signal.key for c in a.contributions]}")
        assert len(labels) == 17
        assert len(set(labels)) == 17
        assert sum(label.endswith(".json") for label in labels) == 4
        assert sum(label.startswith("bulk-10-patients/") for label in labels) == 13
        assert sum(data_run.distribution().values()) == 17
        assert set(data_run.distribution()) <= OUTCOMES

    def bulk(self, data_run: DataRun) -> list[tuple[str, Assessment]]:
        return [(label, a) for label, a in data_run.rows if label.startswith("bulk-10-patients/")]

    def test_no_bulk_patient_gets_a_card(self, data_run: DataRun) -> None:
        for label, a in self.bulk(data_run):
            assert outcome(a) not in ("possible", "likely"), label
            assert not a.actionable

    def test_low_back_pain_patients_have_no_knee_complaint(self, data_run: DataRun) -> None:
        back = [(label, a) for label, a in self.bulk(data_run) if any(c.signal.key == "low_back_pain" for c in a.findings)]
        assert len(back) == 2
        for label, a in back:
            assert not a.eligible, label
            assert a.ineligible_reason is not None and "no active knee complaint" in a.ineligible_reason

    def test_knee_oa_patient_has_no_spinal_finding(self, data_run: DataRun) -> None:
        knee = [(label, a) for label, a in self.bulk(data_run) if any(c.signal.key == "knee_oa" for c in a.alternatives)]
        assert len(knee) == 1
        (_, a) = knee[0]
        assert not {c.signal.key for c in a.findings} & SPINAL_SIGNALS
        assert a.score < 1

    def test_rows_are_deterministic(self, model: Model, today: date, shared_data: Path, data_run: DataRun) -> None:
        again = evaluate_data(model, shared_data, today)
        assert [(label, a.to_dict()) for label, a in again.rows] == [(label, a.to_dict()) for label, a in data_run.rows]

    def test_distribution(self, data_run: DataRun) -> None:
        assert data_run.distribution() == Counter(outcome(a) for _, a in data_run.rows)
