"""Property-based fuzzing of the hook and feedback endpoints over real HTTP, on SQLite and PostgreSQL.

Hypothesis mutates a valid request: any field replaced by any JSON value (strings with control characters
and astral planes, integers past 64 bits, deep nesting, huge strings). Whatever it sends, with a valid
token: no answer is a 5xx, and every call has its decision row (an answer of 200 with the very cards the
client saw). Bounded for CI; `bench/fuzz_and_faults.py` runs 10,000 requests per database.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cds_service.requests import overridden, patient_view
from tests.fuzzing import paths, replaced
from tests.support import LogReader, RunningService, assert_cards_response

PATIENT_VIEW = "/cds-services/spine-knee-patient-view"
FEEDBACK = PATIENT_VIEW + "/feedback"
EXAMPLES = 120

text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=5),
    st.sampled_from(["", "a" * 300, "x\r\ny", "http://[::1", "https://h:99999/", "Patient/../x", "\u0000"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)


BASE = patient_view(seed=900)
_seeds = itertools.count(901)


@st.composite
def mutated_requests(draw: st.DrawFn) -> Any:
    document: Any = copy.deepcopy(BASE)
    document["hookInstance"] = f"fuzz-{next(_seeds)}"
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        choices = paths(document) if isinstance(document, dict) else []
        if not choices:
            break
        where = draw(st.sampled_from(choices))
        document = replaced(document, where, draw(json_values))
    if draw(st.integers(0, 20)) == 0:
        document["extension"] = {"deep": draw(st.integers(250, 400)) * [None]}
        nested: Any = []
        for _ in range(draw(st.integers(240, 300))):
            nested = [nested]
        document["extension"]["nest"] = nested
    return document


@pytest.fixture
def running(service_factory: Callable[..., RunningService], database_url: str) -> RunningService:
    return service_factory(database_url=database_url)


def test_no_mutated_hook_call_answers_5xx_and_every_one_is_logged(
    running: RunningService, read_log: Callable[[RunningService], LogReader]
) -> None:
    log = read_log(running)
    problems: list[str] = []
    statuses: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=mutated_requests())
    def call(body: Any) -> None:
        before = log.count("decisions")
        response = running.post(PATIENT_VIEW, body)
        statuses.append(response.status_code)
        if response.status_code >= 500:
            problems.append(f"{response.status_code}: {response.text[:200]}")
        if log.count("decisions") != before + 1:
            problems.append(f"{response.status_code} without its decision row")
        if response.status_code == 200 and isinstance(body.get("hookInstance"), str):
            rows = [r for r in log.decisions(hook_instance=body["hookInstance"]) if r["status_code"] == 200]
            if not rows or len(rows[-1]["card_uuids"]) != len(response.json()["cards"]):
                problems.append("a 200 whose cards are not the logged ones")

    call()
    assert problems == []
    # the mutations reach both sides of the edge: some are still valid calls, some are refused
    assert {200, 400} <= set(statuses)


def test_no_mutated_feedback_call_answers_5xx(running: RunningService) -> None:
    (card,) = assert_cards_response(running.post(PATIENT_VIEW, patient_view(seed=950)))
    base = {"feedback": [overridden(card, "patient-declines")]}
    problems: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def call(data: st.DataObject) -> None:
        document: Any = copy.deepcopy(base)
        where = data.draw(st.sampled_from(paths(document)))
        document = replaced(document, where, data.draw(json_values))
        response = running.post(FEEDBACK, document)
        if response.status_code >= 500:
            problems.append(f"{where}: {response.status_code}: {response.text[:200]}")

    call()
    assert problems == []
